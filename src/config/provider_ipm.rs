//! `PROVIDER_IPM`: the provider's images-per-minute limits, overall or per model.

use std::collections::HashMap;

use crate::domain::models::Catalog;

/// `PROVIDER_IPM`: `500` for every model, `doubao-seedream-4.5=50` for one (any name the model
/// table accepts), or both, comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderIpm {
    pub all: Option<u32>,
    /// By provider model id.
    pub per_model: HashMap<String, u32>,
}

impl ProviderIpm {
    pub fn parse(value: &str, catalog: &Catalog) -> Result<ProviderIpm, String> {
        let mut out = ProviderIpm::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let number = |n: &str| match n.trim().parse::<u32>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(format!("{n:?} is not a positive whole number")),
            };
            match entry.split_once('=') {
                None => out.all = Some(number(entry)?),
                Some((model, n)) => {
                    let m = catalog
                        .find(model)
                        .ok_or_else(|| format!("unknown model {model:?}"))?;
                    out.per_model.insert(m.id.clone(), number(n)?);
                }
            }
        }
        Ok(out)
    }

    /// The limit for a model: its own entry, else the one for all, else the table's.
    pub fn for_model(&self, id: &str, table: u32) -> u32 {
        self.per_model
            .get(id)
            .copied()
            .or(self.all)
            .unwrap_or(table)
    }
}

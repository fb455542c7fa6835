//! Whether a request's variables are valid for its operation, checked against the schema's input
//! types the way async-graphql's strict validation checks them (`ArgumentsOfCorrectType`).
//!
//! Why: validation is the one part of a request async-graphql redoes for a document it has seen,
//! and ~12 % of a `task(id)` poll's CPU. Everything it checks depends on the document alone,
//! except the variables' values. So a document that passed strict validation once is run on the
//! same schema in `Fast` mode (limits still counted, see `post_handler`) when its variables pass
//! this check; otherwise, or for anything this check does not know (a custom scalar), the request
//! takes the strict schema and gets its exact errors. `Fast` alone would not do: its executor
//! ignores unknown fields of input objects instead of refusing them.

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{BaseType, DocumentOperations, ExecutableDocument, Type};
use async_graphql::{Value as ConstValue, Variables};
use serde_json::Value;

use super::AppSchema;

/// A type reference as variables and input fields declare it.
#[derive(Debug, Clone)]
enum TypeRef {
    NonNull(Box<TypeRef>),
    List(Box<TypeRef>),
    Named(String),
}

#[derive(Debug)]
struct Field {
    ty: TypeRef,
    has_default: bool,
}

#[derive(Debug)]
enum Kind {
    Object(HashMap<String, Field>),
    Enum(HashSet<String>),
}

#[derive(Debug, Default)]
pub struct InputCheck {
    types: HashMap<String, Kind>,
}

const INTROSPECTION: &str = "{ __schema { types { kind name enumValues { name }
    inputFields { name defaultValue type { ...T } } } } }
    fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name } } } } } }";

impl InputCheck {
    /// Reads the input types off `schema` (which must allow introspection). An answer it cannot
    /// read leaves the check empty, which sends requests with input-object variables to strict
    /// validation: slower, never wrong.
    pub async fn of(schema: &AppSchema) -> InputCheck {
        let resp = schema.execute(INTROSPECTION).await;
        let data = resp.data.into_json().unwrap_or(Value::Null);
        let mut types = HashMap::new();
        for t in data["__schema"]["types"].as_array().into_iter().flatten() {
            let Some(name) = t["name"].as_str() else {
                continue;
            };
            match t["kind"].as_str() {
                Some("INPUT_OBJECT") => {
                    let mut fields = HashMap::new();
                    for f in t["inputFields"].as_array().into_iter().flatten() {
                        let (Some(fname), Some(ty)) = (f["name"].as_str(), type_ref(&f["type"]))
                        else {
                            continue;
                        };
                        let has_default = !f["defaultValue"].is_null();
                        fields.insert(fname.to_string(), Field { ty, has_default });
                    }
                    types.insert(name.to_string(), Kind::Object(fields));
                }
                Some("ENUM") => {
                    let values = t["enumValues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v["name"].as_str().map(str::to_string))
                        .collect();
                    types.insert(name.to_string(), Kind::Enum(values));
                }
                _ => {}
            }
        }
        InputCheck { types }
    }

    /// True when every variable of the operation `doc` runs is given a value strict validation
    /// accepts (or may be left out). False when one is not, or cannot be told.
    pub fn accepts(
        &self,
        doc: &ExecutableDocument,
        operation: Option<&str>,
        variables: &Variables,
    ) -> bool {
        let op = match (&doc.operations, operation) {
            (DocumentOperations::Single(op), _) => op,
            (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
                Some(op) => op,
                None => return false,
            },
            (DocumentOperations::Multiple(_), None) => return false,
        };
        op.node.variable_definitions.iter().all(|def| {
            let def = &def.node;
            let ty = from_parser(&def.var_type.node);
            match variables.get(&def.name.node) {
                None => def.default_value.is_some() || !matches!(ty, TypeRef::NonNull(_)),
                Some(v) => self.valid(&ty, v),
            }
        })
    }

    fn valid(&self, ty: &TypeRef, v: &ConstValue) -> bool {
        match ty {
            TypeRef::NonNull(inner) => !matches!(v, ConstValue::Null) && self.valid(inner, v),
            _ if matches!(v, ConstValue::Null) => true,
            // A single value where a list is expected is a list of one (input coercion).
            TypeRef::List(inner) => match v {
                ConstValue::List(items) => items.iter().all(|i| self.valid(inner, i)),
                single => self.valid(inner, single),
            },
            TypeRef::Named(name) => self.valid_named(name, v),
        }
    }

    fn valid_named(&self, name: &str, v: &ConstValue) -> bool {
        match (name, v) {
            ("Int", ConstValue::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            ("Float", ConstValue::Number(_)) => true,
            ("String", ConstValue::String(_)) => true,
            ("Boolean", ConstValue::Boolean(_)) => true,
            ("ID", ConstValue::String(_)) => true,
            ("ID", ConstValue::Number(n)) => n.is_i64() || n.is_u64(),
            ("Int" | "Float" | "String" | "Boolean" | "ID", _) => false,
            _ => match self.types.get(name) {
                Some(Kind::Enum(values)) => match v {
                    ConstValue::Enum(e) => values.contains(e.as_str()),
                    ConstValue::String(s) => values.contains(s.as_str()),
                    _ => false,
                },
                Some(Kind::Object(fields)) => {
                    let ConstValue::Object(given) = v else {
                        return false;
                    };
                    given.keys().all(|k| fields.contains_key(k.as_str()))
                        && fields
                            .iter()
                            .all(|(fname, f)| match given.get(fname.as_str()) {
                                None => f.has_default || !matches!(f.ty, TypeRef::NonNull(_)),
                                Some(fv) => self.valid(&f.ty, fv),
                            })
                }
                // A custom scalar: only the strict validation knows what it takes.
                None => false,
            },
        }
    }
}

fn type_ref(t: &Value) -> Option<TypeRef> {
    match t["kind"].as_str()? {
        "NON_NULL" => Some(TypeRef::NonNull(Box::new(type_ref(&t["ofType"])?))),
        "LIST" => Some(TypeRef::List(Box::new(type_ref(&t["ofType"])?))),
        _ => Some(TypeRef::Named(t["name"].as_str()?.to_string())),
    }
}

fn from_parser(t: &Type) -> TypeRef {
    let base = match &t.base {
        BaseType::Named(n) => TypeRef::Named(n.to_string()),
        BaseType::List(inner) => TypeRef::List(Box::new(from_parser(inner))),
    };
    if t.nullable {
        base
    } else {
        TypeRef::NonNull(Box::new(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check() -> InputCheck {
        super::super::input_check().await
    }

    fn accepts(c: &InputCheck, query: &str, vars: serde_json::Value) -> bool {
        let doc = async_graphql::parser::parse_query(query).expect("document");
        c.accepts(&doc, None, &Variables::from_json(vars))
    }

    const CREATE: &str =
        "mutation($i: CreateImageTaskInput!) { createImageTask(input: $i) { id } }";

    #[tokio::test]
    async fn input_objects_take_known_fields_of_the_right_types() {
        let c = check().await;
        let ok = serde_json::json!({"i": {"prompt": "p", "n": 2, "guidanceScale": 3,
            "images": ["a"], "watermark": true, "userId": 7}});
        assert!(accepts(&c, CREATE, ok));
        // One image where a list is expected is a list of one.
        assert!(accepts(
            &c,
            CREATE,
            serde_json::json!({"i": {"prompt": "p", "images": "a"}})
        ));
        // Nullable fields may be null or left out.
        assert!(accepts(
            &c,
            CREATE,
            serde_json::json!({"i": {"prompt": "p", "seed": null}})
        ));
        for bad in [
            serde_json::json!({"i": {"prompt": "p", "bogus": 1}}),
            serde_json::json!({"i": {"n": 1}}),
            serde_json::json!({"i": {"prompt": null}}),
            serde_json::json!({"i": {"prompt": "p", "n": "2"}}),
            serde_json::json!({"i": {"prompt": "p", "n": 2.5}}),
            serde_json::json!({"i": {"prompt": "p", "n": 3_000_000_000u64}}),
            serde_json::json!({"i": {"prompt": "p", "images": [1]}}),
            serde_json::json!({"i": {"prompt": "p", "images": [null]}}),
            serde_json::json!({"i": {"prompt": "p", "userId": {"x": 1}}}),
            serde_json::json!({"i": "p"}),
            serde_json::json!({"i": null}),
            serde_json::json!({}),
        ] {
            assert!(!accepts(&c, CREATE, bad.clone()), "accepted {bad}");
        }
    }

    #[tokio::test]
    async fn enums_defaults_and_operations() {
        let c = check().await;
        let q =
            "query($s: TaskStatus, $n: Int = 5) { tasks(status: $s, first: $n) { totalCount } }";
        assert!(accepts(&c, q, serde_json::json!({"s": "PENDING"})));
        assert!(accepts(&c, q, serde_json::json!({})));
        assert!(!accepts(&c, q, serde_json::json!({"s": "pending"})));
        assert!(!accepts(&c, q, serde_json::json!({"s": 1})));
        // Of several operations, the one named is checked; unnamed, none can be told.
        let two = "query A($id: ID!) { task(id: $id) { id } } query B { tasks { totalCount } }";
        let doc = async_graphql::parser::parse_query(two).expect("document");
        let none = Variables::from_json(serde_json::json!({}));
        assert!(c.accepts(&doc, Some("B"), &none));
        assert!(!c.accepts(&doc, Some("A"), &none));
        assert!(!c.accepts(&doc, None, &none));
        assert!(!c.accepts(&doc, Some("C"), &none));
    }
}

//! Who may do what: the admin everything; a user key its own user, tasks and keys. Every
//! service method takes the caller's `Principal` and asks here.

use crate::auth::Principal;
use crate::domain::{self, Task};
use crate::error::AppError;

/// A user key acting on another user's record, or on something only the admin may do.
pub(super) fn forbidden(what: &str) -> AppError {
    AppError::Forbidden(format!("this API key may not {what}"))
}

pub(super) fn require_admin(p: &Principal, what: &str) -> Result<(), AppError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

/// The admin reaches every user; a user key only its own.
pub(super) fn require_user(p: &Principal, user_id: &str) -> Result<(), AppError> {
    match p.user_id() {
        None => Ok(()),
        Some(own) if own == user_id => Ok(()),
        Some(_) => Err(forbidden("act on another user")),
    }
}

/// Whether `p` may see the task. Other users' tasks are answered as missing, not forbidden, so
/// task ids cannot be probed for existence.
pub fn may_see_task(p: &Principal, t: &Task) -> bool {
    p.user_id().is_none_or(|own| own == t.user_id)
}

/// Rejects ids that cannot exist before they reach a query.
pub fn check_id(field: &str, id: &str) -> Result<(), AppError> {
    if domain::is_valid_id(id) {
        Ok(())
    } else {
        Err(AppError::invalid(field, "is not a valid id"))
    }
}

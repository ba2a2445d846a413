//! Importers for the norm family.

use super::Registry;

pub(super) fn register(reg: &mut Registry) {
    let _ = reg;
}

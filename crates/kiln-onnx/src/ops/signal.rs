//! Importers for the signal family.

use super::Registry;

pub(super) fn register(reg: &mut Registry) {
    let _ = reg;
}

//! Importers for the quant family.

use super::Registry;

pub(super) fn register(reg: &mut Registry) {
    let _ = reg;
}

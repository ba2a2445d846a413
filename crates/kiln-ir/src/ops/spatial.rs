//! Image-space resampling and detection: Resize, Upsample, GridSample, RoiAlign, NonMaxSuppression.

use super::infer::*;
use crate::TypeInfo;

/// Image-space resampling and detection: Resize, Upsample, GridSample, RoiAlign, NonMaxSuppression.
#[derive(Clone, Debug, PartialEq)]
pub enum SpatialOp {
    /// Resize (placeholder until the family lands).
    Resize,
}

impl SpatialOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            SpatialOp::Resize => "Resize",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}

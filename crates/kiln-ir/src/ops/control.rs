//! Control flow: If, Loop and Scan, each carrying subgraphs.
//!
//! Subgraphs never read outer values by name: the importer turns every outer value a body
//! reads into an extra input of the control node, appended after the node's own inputs in
//! sorted name order, which each body sees as extra graph inputs after its formal ones.

use super::infer::*;
use crate::{Graph, TypeInfo};

/// Control flow ops.
#[derive(Clone, Debug)]
pub enum ControlOp {
    /// Runs one branch on a boolean condition (input 0); inputs 1.. are captured outer values,
    /// passed to both branches as their graph inputs.
    If {
        /// Taken when the condition is true.
        then_branch: Box<Graph>,
        /// Taken otherwise.
        else_branch: Box<Graph>,
    },
    /// A loop with an optional trip count (input 0) and an optional condition (input 1), then
    /// `num_carried` loop-carried values, then captured values. The body takes
    /// `(iteration, cond, carried.., captured..)` and returns `(cond, carried.., scan..)`; the
    /// node returns the final carried values, then each scan output of every iteration stacked
    /// along a new first axis.
    Loop {
        /// The loop body.
        body: Box<Graph>,
        /// How many loop-carried values there are.
        num_carried: usize,
    },
    /// Scans the body over slices of its scan inputs. Inputs are `num_state` initial states,
    /// `num_scan_inputs` scan inputs, then captured values; outputs are the final states, then
    /// the scan outputs built from every iteration's slices.
    Scan {
        /// The loop body: `(state.., slice..) -> (state.., slice..)`.
        body: Box<Graph>,
        /// How many state variables there are.
        num_state: usize,
        /// How many of the inputs are scanned.
        num_scan_inputs: usize,
        /// The axis each scan input is sliced along (may be negative).
        scan_input_axes: Vec<i64>,
        /// Whether each scan input is walked last slice first.
        scan_input_reverse: Vec<bool>,
        /// The axis each scan output stacks its slices along (may be negative).
        scan_output_axes: Vec<i64>,
        /// Whether each scan output is filled last slice first.
        scan_output_reverse: Vec<bool>,
        /// The opset 8 form: input 0 is optional `sequence_lens` and every state and scan
        /// input has a leading batch axis, the scan axis being 1.
        batched: bool,
    },
}

impl ControlOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            ControlOp::If { .. } => "If",
            ControlOp::Loop { .. } => "Loop",
            ControlOp::Scan { .. } => "Scan",
        }
    }

    /// The type rule: carried values and states keep their input types; the rest is taken
    /// from the body's declared outputs where known.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let body_dtype = |g: &Graph, i: usize| {
            g.outputs.get(i).and_then(|o| g.value_info(o.value).ty.dtype).map(TypeInfo::of_dtype).unwrap_or_default()
        };
        Ok(match self {
            ControlOp::If { then_branch, else_branch } => (0..num_outputs)
                .map(|i| {
                    let (a, b) = (body_dtype(then_branch, i), body_dtype(else_branch, i));
                    if a.dtype == b.dtype {
                        a
                    } else {
                        TypeInfo::unknown()
                    }
                })
                .collect(),
            ControlOp::Loop { body, num_carried } => (0..num_outputs)
                .map(|i| if i < *num_carried { input_ty(inputs, 2 + i) } else { body_dtype(body, 1 + i) })
                .collect(),
            ControlOp::Scan { body, num_state, batched, .. } => (0..num_outputs)
                .map(|i| if i < *num_state { input_ty(inputs, usize::from(*batched) + i) } else { body_dtype(body, i) })
                .collect(),
        })
    }

    /// The subgraphs carried.
    pub fn subgraphs(&self) -> Vec<&Graph> {
        match self {
            ControlOp::If { then_branch, else_branch } => vec![then_branch, else_branch],
            ControlOp::Loop { body, .. } | ControlOp::Scan { body, .. } => vec![body],
        }
    }
}

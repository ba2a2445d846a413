//! Importers for control flow: If, Loop, Scan.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::ControlOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("If", if_);
    reg.insert("Loop", loop_);
    reg.insert("Scan", scan);
}

fn if_(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Control(ControlOp::If {
        then_branch: Box::new(cx.get_graph("then_branch")?),
        else_branch: Box::new(cx.get_graph("else_branch")?),
    }))
}

fn loop_(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.num_inputs() < 2 {
        return Err(cx.error(format!("expected at least 2 inputs (M, cond), found {}", cx.num_inputs())));
    }
    let num_carried = cx.num_inputs() - 2;
    let body = cx.get_graph("body")?;
    if body.inputs.len() < 2 + num_carried {
        return Err(cx.attr_error(
            "body",
            format!(
                "expected at least {} inputs (iteration, cond and the carried values), found {}",
                2 + num_carried,
                body.inputs.len()
            ),
        ));
    }
    if body.outputs.len() < 1 + num_carried {
        return Err(cx.attr_error(
            "body",
            format!(
                "expected at least {} outputs (cond and the carried values), found {}",
                1 + num_carried,
                body.outputs.len()
            ),
        ));
    }
    Ok(Op::Control(ControlOp::Loop { body: Box::new(body), num_carried }))
}

fn scan(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let batched = cx.opset() < 9;
    let body = cx.get_graph("body")?;
    let m = cx.req_i64("num_scan_inputs")?;
    let formal = cx.num_inputs().saturating_sub(usize::from(batched));
    if m < 1 || m as usize > formal {
        return Err(cx.attr_error("num_scan_inputs", format!("expected 1 to {formal}, found {m}")));
    }
    let m = m as usize;
    let num_state = formal - m;
    if body.outputs.len() < num_state {
        return Err(
            cx.attr_error("body", format!("expected at least {num_state} outputs, found {}", body.outputs.len()))
        );
    }
    let k = body.outputs.len() - num_state;
    let list = |name: &str, n: usize, default: i64| -> Result<Vec<i64>, ImportError> {
        match cx.get_ints(name)? {
            Some(v) if v.len() == n => Ok(v),
            Some(v) => Err(cx.attr_error(name, format!("expected {n} values, found {}", v.len()))),
            None => Ok(vec![default; n]),
        }
    };
    let reverse = |name: &str, n: usize| -> Result<Vec<bool>, ImportError> {
        list(name, n, 0)?
            .into_iter()
            .map(|d| match d {
                0 => Ok(false),
                1 => Ok(true),
                d => Err(cx.attr_error(name, format!("expected 0 or 1, found {d}"))),
            })
            .collect()
    };
    let (scan_input_axes, scan_output_axes) = if batched {
        // Opset 8 scans axis 1 of batched inputs and has no axis attributes.
        (vec![0; m], vec![0; k])
    } else {
        (list("scan_input_axes", m, 0)?, list("scan_output_axes", k, 0)?)
    };
    let scan_input_reverse = reverse(if batched { "directions" } else { "scan_input_directions" }, m)?;
    let scan_output_reverse = if batched { vec![false; k] } else { reverse("scan_output_directions", k)? };
    Ok(Op::Control(ControlOp::Scan {
        body: Box::new(body),
        num_state,
        num_scan_inputs: m,
        scan_input_axes,
        scan_input_reverse,
        scan_output_axes,
        scan_output_reverse,
        batched,
    }))
}

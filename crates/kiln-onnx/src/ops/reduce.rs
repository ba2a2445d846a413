//! Importers for the reduce family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::reduce::Reducer;
use kiln_ir::ops::ReduceOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("ReduceSum", |cx| reduce(cx, Reducer::Sum));
    reg.insert("ReduceMean", |cx| reduce(cx, Reducer::Mean));
    reg.insert("ReduceMax", |cx| reduce(cx, Reducer::Max));
    reg.insert("ReduceMin", |cx| reduce(cx, Reducer::Min));
    reg.insert("ReduceProd", |cx| reduce(cx, Reducer::Prod));
    reg.insert("ReduceL1", |cx| reduce(cx, Reducer::L1));
    reg.insert("ReduceL2", |cx| reduce(cx, Reducer::L2));
    reg.insert("ReduceLogSum", |cx| reduce(cx, Reducer::LogSum));
    reg.insert("ReduceLogSumExp", |cx| reduce(cx, Reducer::LogSumExp));
    reg.insert("ReduceSumSquare", |cx| reduce(cx, Reducer::SumSquare));
    reg.insert("ArgMax", arg_max);
    reg.insert("ArgMin", arg_min);
    reg.insert("TopK", top_k);
    reg.insert("CumSum", cum_sum);
}

fn reduce(cx: &NodeCtx<'_>, reducer: Reducer) -> Result<Op, ImportError> {
    let axes =
        if cx.opset() < reducer.axes_input_since() { Some(cx.get_ints("axes")?.unwrap_or_default()) } else { None };
    Ok(Op::Reduce(ReduceOp::Reduce {
        reducer,
        axes,
        keepdims: cx.bool_or("keepdims", true)?,
        noop_with_empty_axes: cx.bool_or("noop_with_empty_axes", false)?,
    }))
}

fn arg_max(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Reduce(ReduceOp::ArgMax {
        axis: cx.i64_or("axis", 0)?,
        keepdims: cx.bool_or("keepdims", true)?,
        select_last_index: cx.bool_or("select_last_index", false)?,
    }))
}

fn arg_min(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Reduce(ReduceOp::ArgMin {
        axis: cx.i64_or("axis", 0)?,
        keepdims: cx.bool_or("keepdims", true)?,
        select_last_index: cx.bool_or("select_last_index", false)?,
    }))
}

fn top_k(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let k = if cx.opset() < 10 {
        let k = cx.req_i64("k")?;
        if k < 0 {
            return Err(cx.attr_error("k", format!("expected a count of at least 0, found {k}")));
        }
        Some(k as usize)
    } else {
        None
    };
    Ok(Op::Reduce(ReduceOp::TopK {
        axis: cx.i64_or("axis", -1)?,
        largest: cx.bool_or("largest", true)?,
        sorted: cx.bool_or("sorted", true)?,
        k,
    }))
}

fn cum_sum(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Reduce(ReduceOp::CumSum {
        exclusive: cx.bool_or("exclusive", false)?,
        reverse: cx.bool_or("reverse", false)?,
    }))
}

//! Replaces Shape and Size by constants where the input's static shape is fully known.
//!
//! Exporters compute reshape targets at run time (`Shape -> Gather -> Concat -> Reshape`);
//! once the shape is a constant, constant folding turns the whole chain into one, and type
//! inference then knows every downstream shape.

use super::{Pass, PassContext};
use crate::ops::LayoutOp;
use crate::{Graph, IrError, Op, Tensor, Value};

/// Folds `Shape` and `Size` of values whose static shape is concrete.
pub struct FoldShapes;

/// The dims `Shape { start, end }` returns for a shape of this rank, clamped as the spec says.
fn shape_range(rank: usize, start: i64, end: Option<i64>) -> std::ops::Range<usize> {
    let r = rank as i64;
    let clamp = |i: i64| (if i < 0 { i + r } else { i }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    s..e.max(s)
}

impl Pass for FoldShapes {
    fn name(&self) -> &'static str {
        "fold-shapes"
    }

    fn run(&self, graph: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let Some(x) = graph.inputs_of(id).first().copied().flatten() else { continue };
            let Some(shape) = graph.value_info(x).ty.concrete_shape() else { continue };
            let t = match &graph.node(id).op {
                Op::Layout(LayoutOp::Shape { start, end }) => {
                    let dims: Vec<i64> =
                        shape[shape_range(shape.len(), *start, *end)].iter().map(|&d| d as i64).collect();
                    Tensor::from_vec(vec![dims.len()], dims)
                }
                Op::Layout(LayoutOp::Size) => Ok(Tensor::scalar(shape.iter().product::<usize>() as i64)),
                _ => continue,
            };
            let t = t.map_err(|e| IrError::Fold {
                node: graph.node(id).name.clone(),
                op: "Shape".into(),
                msg: e.to_string(),
            })?;
            let name = std::mem::take(&mut graph.node_mut(id).outputs[0].name);
            let c = graph.add_const(name, t);
            graph.replace_uses(Value { node: id, slot: 0 }, c);
            graph.remove_node(id);
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::shape_range;

    #[test]
    fn shape_range_clamps_like_the_spec() {
        assert_eq!(shape_range(4, 0, None), 0..4);
        assert_eq!(shape_range(4, -1, None), 3..4);
        assert_eq!(shape_range(4, 1, Some(-1)), 1..3);
        assert_eq!(shape_range(4, -10, Some(10)), 0..4);
        assert_eq!(shape_range(4, 3, Some(1)), 3..3);
    }
}

//! Host tensors to and from the bytes the kernels read and write.

use crate::error::{CudaError, Result};
use kiln_ir::{lowp, DType, Tensor, TensorData};

/// The tensor's elements as little-endian bytes, in the layout the kernels use.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    macro_rules! le {
        ($v:expr) => {
            $v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
    }
    Ok(match t.data() {
        TensorData::F32(v) => le!(v),
        TensorData::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::F64(v) => le!(v),
        TensorData::I8(v) => le!(v),
        TensorData::U8(v) => v.clone(),
        TensorData::I16(v) => le!(v),
        TensorData::U16(v) => le!(v),
        TensorData::I32(v) => le!(v),
        TensorData::U32(v) => le!(v),
        TensorData::I64(v) => le!(v),
        TensorData::U64(v) => le!(v),
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        // The small types: one element per byte, as kiln-ir holds them.
        TensorData::F8E4M3FN(v) => v.iter().map(|x| x.0).collect(),
        TensorData::F8E4M3FNUZ(v) => v.iter().map(|x| x.0).collect(),
        TensorData::F8E5M2(v) => v.iter().map(|x| x.0).collect(),
        TensorData::F8E5M2FNUZ(v) => v.iter().map(|x| x.0).collect(),
        TensorData::F4E2M1(v) => v.iter().map(|x| x.0).collect(),
        TensorData::F8E8M0(v) => v.iter().map(|x| x.0).collect(),
        TensorData::U4(v) => v.iter().map(|x| x.0).collect(),
        TensorData::I4(v) => v.iter().map(|x| x.0 as u8).collect(),
    })
}

/// A tensor of `dtype` and `shape` from little-endian bytes.
pub fn tensor_from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let size = crate::codegen::storage_type(dtype).map(|_| dtype.size())?;
    if bytes.len() < n * size {
        return Err(CudaError::Invalid(format!("{} bytes cannot hold {n} elements of {dtype}", bytes.len())));
    }
    let bytes = &bytes[..n * size];
    macro_rules! from {
        ($t:ty, $w:expr) => {
            bytes.chunks_exact($w).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $w]))).collect::<Vec<$t>>()
        };
    }
    let data = match dtype {
        DType::F32 => TensorData::F32(from!(f32, 4)),
        DType::F16 => TensorData::F16(from!(u16, 2).into_iter().map(half::f16::from_bits).collect()),
        DType::BF16 => TensorData::BF16(from!(u16, 2).into_iter().map(half::bf16::from_bits).collect()),
        DType::F64 => TensorData::F64(from!(f64, 8)),
        DType::I8 => TensorData::I8(from!(i8, 1)),
        DType::U8 => TensorData::U8(bytes.to_vec()),
        DType::I16 => TensorData::I16(from!(i16, 2)),
        DType::U16 => TensorData::U16(from!(u16, 2)),
        DType::I32 => TensorData::I32(from!(i32, 4)),
        DType::U32 => TensorData::U32(from!(u32, 4)),
        DType::I64 => TensorData::I64(from!(i64, 8)),
        DType::U64 => TensorData::U64(from!(u64, 8)),
        DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DType::F8E4M3FN => TensorData::F8E4M3FN(bytes.iter().map(|&b| lowp::F8E4M3FN(b)).collect()),
        DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(bytes.iter().map(|&b| lowp::F8E4M3FNUZ(b)).collect()),
        DType::F8E5M2 => TensorData::F8E5M2(bytes.iter().map(|&b| lowp::F8E5M2(b)).collect()),
        DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(bytes.iter().map(|&b| lowp::F8E5M2FNUZ(b)).collect()),
        DType::F4E2M1 => TensorData::F4E2M1(bytes.iter().map(|&b| lowp::F4E2M1(b)).collect()),
        DType::F8E8M0 => TensorData::F8E8M0(bytes.iter().map(|&b| lowp::F8E8M0(b)).collect()),
        DType::U4 => TensorData::U4(bytes.iter().map(|&b| lowp::U4(b)).collect()),
        DType::I4 => TensorData::I4(bytes.iter().map(|&b| lowp::I4(b as i8)).collect()),
    };
    Tensor::new(shape.to_vec(), data).map_err(|e| CudaError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_kernel_type() {
        let x = Tensor::from_vec(vec![2, 3], vec![1.5f32, -2.0, 0.0, 7.25, -0.5, 3.0]).unwrap();
        for dt in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I8,
            DType::U8,
            DType::I16,
            DType::U16,
            DType::I32,
            DType::U32,
            DType::I64,
            DType::U64,
            DType::Bool,
        ] {
            let t = x.cast(dt);
            let b = tensor_bytes(&t).unwrap();
            assert_eq!(b.len(), 6 * dt.size(), "{dt}");
            assert_eq!(tensor_from_bytes(dt, &[2, 3], &b).unwrap(), t, "{dt}");
        }
        assert!(tensor_from_bytes(DType::F32, &[4], &[0; 15]).unwrap_err().to_string().contains("cannot hold"));
    }

    #[test]
    fn small_types_take_one_byte_per_element() {
        let x = Tensor::from_vec(vec![2, 3], vec![1.5f32, -2.0, 0.0, 7.25, -0.5, f32::NAN]).unwrap();
        for dt in DType::ALL.into_iter().filter(|d| d.is_low_precision_float() || matches!(d, DType::I4 | DType::U4)) {
            let t = x.cast(dt);
            let b = tensor_bytes(&t).unwrap();
            assert_eq!(b.len(), 6, "{dt}");
            let back = tensor_from_bytes(dt, &[2, 3], &b).unwrap();
            assert_eq!(tensor_bytes(&back).unwrap(), b, "{dt}");
        }
        let i4 = Tensor::from_vec(vec![2], vec![lowp::I4(-8), lowp::I4(7)]).unwrap();
        assert_eq!(tensor_bytes(&i4).unwrap(), [0xF8, 7]);
    }
}

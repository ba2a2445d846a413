//! Reading and writing NumPy `.npy` files, the exchange format of `kiln run`.

use crate::Error;
use kiln_ir::{bf16, f16, DType, Tensor};
use npyz::WriterBuilder;
use std::path::Path;

fn err(path: &Path, msg: impl ToString) -> Error {
    Error::Npy { path: path.display().to_string(), msg: msg.to_string() }
}

/// Reads a `.npy` file into a tensor. Fortran-order arrays are refused.
pub fn read(path: &Path) -> Result<Tensor, Error> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e))?;
    read_bytes(&bytes).map_err(|m| err(path, m))
}

/// The three entries of a plain array's header, as our own parser read them.
#[derive(Debug)]
struct Header<'a> {
    descr: &'a str,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// Parses the header dict of a `.npy` file before npyz sees it: a Python dict literal whose
/// keys are `descr` (a dtype string), `fortran_order` (a bool) and `shape` (a tuple or list
/// of non-negative integers), each once, in any order, with optional trailing commas.
/// Anything else (a structured dtype, a repeated key, an expression) is refused here.
///
/// npyz trusts its header in three ways that fuzzing found: it allocates the declared header
/// length up front, its backtracking parser takes time exponential in bracket depth, and it
/// multiplies the dimensions unchecked. A strict grammar with no nesting, a length checked
/// against the file, and a checked product close all three: npyz then only reads a header
/// whose meaning we know, and decodes the data.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    // A bad magic or version, or a file too short for the length field, is left to npyz.
    let (len, start) = match *bytes {
        [0x93, b'N', b'U', b'M', b'P', b'Y', 1, _, a, b, ..] => (u16::from_le_bytes([a, b]) as usize, 10),
        [0x93, b'N', b'U', b'M', b'P', b'Y', 2 | 3, _, a, b, c, d, ..] => {
            (u32::from_le_bytes([a, b, c, d]) as usize, 12)
        }
        _ => return Ok(()),
    };
    let Some(header) = bytes[start..].get(..len) else {
        return Err(format!(
            "header declares {len} bytes, the file has {} after the header length",
            bytes.len() - start
        ));
    };
    let text = std::str::from_utf8(header).map_err(|_| "header is not UTF-8 text".to_string())?;
    let h = parse_header(text).map_err(|e| format!("header {:?}: {e}", shorten(text)))?;
    let mut product = 1u64;
    // npyz multiplies the dimensions for the element count and for the strides, the latter
    // even when a zero dimension makes the count 0: the product of the nonzero ones must fit.
    for &d in h.shape.iter().filter(|&&d| d != 0) {
        product = product.checked_mul(d).ok_or("the shape's element count overflows")?;
    }
    if h.fortran_order {
        return Err("Fortran-order arrays are not supported".into());
    }
    // A plain dtype: a byte order, a kind letter and a size, as `<f4` or `|b1`.
    let plain = h.descr.len() >= 3
        && matches!(h.descr.as_bytes()[0], b'<' | b'>' | b'|' | b'=')
        && h.descr.as_bytes()[1].is_ascii_alphabetic()
        && h.descr[2..].bytes().all(|c| c.is_ascii_digit());
    if !plain {
        return Err(format!("dtype '{}' is not supported", h.descr));
    }
    Ok(())
}

/// The first 80 characters of a header, for an error message.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

fn parse_header(text: &str) -> Result<Header<'_>, String> {
    let mut p = Lexer { rest: text };
    p.expect('{')?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    while !p.eat('}') {
        let key = p.string()?;
        p.expect(':')?;
        let repeated = match key {
            "descr" => descr.replace(p.string()?).is_some(),
            "fortran_order" => fortran_order.replace(p.boolean()?).is_some(),
            "shape" => shape.replace(p.dims()?).is_some(),
            _ => return Err(format!("unknown key '{key}'")),
        };
        if repeated {
            return Err(format!("key '{key}' appears twice"));
        }
        if !p.eat(',') {
            p.expect('}')?;
            break;
        }
    }
    if !p.rest.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0').is_empty() {
        return Err("text after the closing brace".into());
    }
    let missing = |k: &str| format!("key '{k}' is missing");
    Ok(Header {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

/// The tokens of a header dict; whitespace between them is skipped.
struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    }

    /// Consumes `c` if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{c}' at {:?}", shorten(self.rest)))
        }
    }

    /// A quoted string without escapes, as NumPy writes dtype strings and keys.
    fn string(&mut self) -> Result<&'a str, String> {
        self.skip_space();
        let quote = match self.rest.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a quoted string at {:?}", shorten(self.rest))),
        };
        let body = &self.rest[1..];
        let end = body.find(quote).ok_or("unterminated string")?;
        let s = &body[..end];
        if s.contains('\\') {
            return Err("escapes in strings are not supported".into());
        }
        self.rest = &body[end + 1..];
        Ok(s)
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_space();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(r) = self.rest.strip_prefix(word) {
                self.rest = r;
                return Ok(value);
            }
        }
        Err(format!("expected True or False at {:?}", shorten(self.rest)))
    }

    /// A tuple or list of decimal integers, as NumPy writes a shape: `()`, `(3,)`, `(2, 3)`.
    fn dims(&mut self) -> Result<Vec<u64>, String> {
        let close = if self.eat('(') {
            ')'
        } else if self.eat('[') {
            ']'
        } else {
            return Err(format!("the shape is not a tuple at {:?}", shorten(self.rest)));
        };
        let mut dims = Vec::new();
        while !self.eat(close) {
            self.skip_space();
            let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
            if digits == 0 {
                return Err(format!("expected a dimension at {:?}", shorten(self.rest)));
            }
            let d = &self.rest[..digits];
            dims.push(d.parse::<u64>().map_err(|_| format!("dimension {d} is too large"))?);
            self.rest = &self.rest[digits..];
            if !self.eat(',') {
                self.expect(close)?;
                break;
            }
        }
        Ok(dims)
    }
}

/// Decodes `.npy` bytes.
pub fn read_bytes(bytes: &[u8]) -> Result<Tensor, String> {
    check_header(bytes)?;
    let npy = npyz::NpyFile::new(bytes).map_err(|e| e.to_string())?;
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
        .collect::<Result<_, _>>()?;
    let n = kiln_ir::checked_numel(&shape).ok_or("element count overflows")?;
    let npyz::DType::Plain(ty) = npy.dtype() else { return Err("structured arrays are not supported".into()) };
    // The header's shape must fit the bytes present before anything is allocated.
    let needed = n.checked_mul(ty.size_field() as usize).ok_or("byte size overflows")?;
    if needed > bytes.len() {
        return Err(format!("header declares {needed} bytes of data, the file has {}", bytes.len()));
    }
    let t = match (ty.type_char(), ty.size_field()) {
        (npyz::TypeChar::Float, 4) => Tensor::from_vec(shape, npy.into_vec::<f32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Float, 8) => Tensor::from_vec(shape, npy.into_vec::<f64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Float, 2) => Tensor::from_vec(shape, npy.into_vec::<f16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 1) => Tensor::from_vec(shape, npy.into_vec::<i8>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 2) => Tensor::from_vec(shape, npy.into_vec::<i16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 4) => Tensor::from_vec(shape, npy.into_vec::<i32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 8) => Tensor::from_vec(shape, npy.into_vec::<i64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 1) => Tensor::from_vec(shape, npy.into_vec::<u8>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 2) => Tensor::from_vec(shape, npy.into_vec::<u16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 4) => Tensor::from_vec(shape, npy.into_vec::<u32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 8) => Tensor::from_vec(shape, npy.into_vec::<u64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Bool, 1) => Tensor::from_vec(shape, npy.into_vec::<bool>().map_err(|e| e.to_string())?),
        (c, s) => return Err(format!("dtype {c:?}{s} is not supported")),
    };
    t.map_err(|e| e.to_string())
}

/// Writes a tensor as a `.npy` file.
///
/// NumPy has no bf16, float8, float4 or E8M0 type, so those are written as float32 (exactly:
/// every value fits); the 4-bit integers are written as int8 and uint8.
pub fn write(path: &Path, t: &Tensor) -> Result<(), Error> {
    let bytes = write_bytes(t).map_err(|m| err(path, m))?;
    std::fs::write(path, bytes).map_err(|e| err(path, e))
}

/// Encodes a tensor as `.npy` bytes.
pub fn write_bytes(t: &Tensor) -> Result<Vec<u8>, String> {
    fn go<T: npyz::Serialize + npyz::AutoSerialize + Copy>(shape: &[usize], v: &[T]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut out)
            .begin_nd()
            .map_err(|e| e.to_string())?;
        w.extend(v.iter().copied()).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }
    let s = t.shape();
    match t.dtype() {
        DType::F32 => go(s, t.as_slice::<f32>().map_err(|e| e.to_string())?),
        DType::F64 => go(s, t.as_slice::<f64>().map_err(|e| e.to_string())?),
        DType::F16 => go(s, t.as_slice::<f16>().map_err(|e| e.to_string())?),
        DType::BF16 => {
            let v: Vec<f32> = t.as_slice::<bf16>().map_err(|e| e.to_string())?.iter().map(|x| x.to_f32()).collect();
            go(s, &v)
        }
        DType::I8 => go(s, t.as_slice::<i8>().map_err(|e| e.to_string())?),
        DType::U8 => go(s, t.as_slice::<u8>().map_err(|e| e.to_string())?),
        DType::I16 => go(s, t.as_slice::<i16>().map_err(|e| e.to_string())?),
        DType::U16 => go(s, t.as_slice::<u16>().map_err(|e| e.to_string())?),
        DType::I32 => go(s, t.as_slice::<i32>().map_err(|e| e.to_string())?),
        DType::U32 => go(s, t.as_slice::<u32>().map_err(|e| e.to_string())?),
        DType::I64 => go(s, t.as_slice::<i64>().map_err(|e| e.to_string())?),
        DType::U64 => go(s, t.as_slice::<u64>().map_err(|e| e.to_string())?),
        DType::Bool => go(s, t.as_slice::<bool>().map_err(|e| e.to_string())?),
        DType::I4 => go(s, t.cast(DType::I8).as_slice::<i8>().map_err(|e| e.to_string())?),
        DType::U4 => go(s, t.cast(DType::U8).as_slice::<u8>().map_err(|e| e.to_string())?),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F4E2M1 | DType::F8E8M0 => {
            go(s, t.cast(DType::F32).as_slice::<f32>().map_err(|e| e.to_string())?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        for d in DType::ALL {
            let t = Tensor::from_vec(vec![2, 3], (0..6).map(|x| x as f32 - 2.0).collect::<Vec<_>>()).unwrap().cast(d);
            let back = read_bytes(&write_bytes(&t).unwrap()).unwrap();
            let want = match d {
                DType::I4 => t.cast(DType::I8),
                DType::U4 => t.cast(DType::U8),
                d if d == DType::BF16 || d.is_low_precision_float() => t.cast(DType::F32),
                _ => t,
            };
            assert_eq!(back, want, "{d}");
        }
    }

    #[test]
    fn lying_header_is_refused() {
        let t = Tensor::from_vec(vec![4], vec![1.0f32; 4]).unwrap();
        let mut b = write_bytes(&t).unwrap();
        b.truncate(b.len() - 8);
        assert!(read_bytes(&b).is_err());
    }

    fn check_refused(bytes: &[u8], want: &str) {
        match read_bytes(bytes) {
            Ok(t) => panic!("read as {t:?}"),
            Err(e) => assert!(e.contains(want), "{e}"),
        }
    }

    /// A version 1 header; its brackets (and anything else) come from `dict`.
    fn npy_v1(dict: &str) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(&[0; 24]);
        b
    }

    /// Found by fuzzing: npyz's header parser backtracks exponentially in the nesting depth, so
    /// 100 brackets would hang the reader. Our own parser allows no nesting besides the shape.
    #[test]
    fn deeply_nested_header_is_refused() {
        let deep = format!("{{'descr': '<i8', 'fortran_order': False, {}'shape': (2,), }}\n", "[".repeat(100));
        check_refused(&npy_v1(&deep), "expected a quoted string at \"[[[");
        let ok = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n";
        assert_eq!(read_bytes(&npy_v1(ok)).unwrap().shape(), &[2]);
    }

    /// The header grammar NumPy writes, in the forms it allows, and what it refuses.
    #[test]
    fn header_grammar() {
        for ok in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            "{\"shape\": [2, 3], \"descr\": \"<f4\", \"fortran_order\": False}",
            "{ 'fortran_order' : False , 'shape' : ( 2 , 3 , ) , 'descr' : '<f4' }   \n",
        ] {
            assert_eq!(read_bytes(&npy_v1(ok)).unwrap().shape(), &[2, 3], "{ok}");
        }
        let refused = [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (2,)}", "key 'shape' appears twice"),
            ("{'descr': '<f4', 'fortran_order': False}", "key 'shape' is missing"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "unknown key 'x'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "expected a dimension"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x", "text after the closing brace"),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", "expected a quoted string"),
            ("{'descr': 'f4', 'fortran_order': False, 'shape': (2,)}", "dtype 'f4' is not supported"),
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (2,)}", "Fortran-order arrays are not supported"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", "is too large"),
        ];
        for (dict, want) in refused {
            check_refused(&npy_v1(dict), want);
        }
    }

    /// npyz allocates the header's declared length before reading it: 4 GiB for this file.
    #[test]
    fn header_longer_than_file_is_refused() {
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(b"{'descr': '<f4'");
        check_refused(&b, "header declares 4294967295 bytes, the file has 15");
    }

    /// Found by fuzzing: npyz multiplies the dimensions unchecked, for the strides even when a
    /// zero dimension makes the element count 0.
    #[test]
    fn overflowing_shape_is_refused() {
        for shape in ["(4294967296, 4294967296, 2)", "(0, 4294967296, 4294967296)", "[4294967296, 4294967296, 2]"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            check_refused(&npy_v1(&dict), "the shape's element count overflows");
        }
    }
}

//! The one matrix product every linalg kernel goes through: the `gemm` crate for f32 and f64,
//! an exact wrapping loop for integers.

use crate::{bail, OpError};
use kiln_ir::Elem;

/// A read-only strided matrix over a slice: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Mat<'a, T> {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Mat<'a, T> {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1).checked_mul(self.rs).zip((self.cols - 1).checked_mul(self.cs));
        matches!(last, Some((r, c)) if r.checked_add(c).is_some_and(|i| i < self.data.len()))
    }
}

/// Products below this many multiply-adds run on one thread.
const THREADING_THRESHOLD: usize = 1 << 16;

/// An element type the linalg kernels compute in.
pub(super) trait Scalar: Elem {
    /// The additive identity.
    const ZERO: Self;
    /// The multiplicative identity.
    const ONE: Self;
    /// Addition (wrapping for integers).
    fn add(self, o: Self) -> Self;
    /// Multiplication (wrapping for integers).
    fn mul(self, o: Self) -> Self;

    /// `dst = alpha * a @ b`, or `dst += alpha * a @ b` when `accumulate`, where `dst` is a
    /// row-major `a.rows x b.cols` matrix. `threads` allows the product to use the thread pool.
    fn gemm(
        dst: &mut [Self],
        a: Mat<'_, Self>,
        b: Mat<'_, Self>,
        alpha: Self,
        accumulate: bool,
        threads: bool,
    ) -> Result<(), OpError> {
        check(dst, &a, &b)?;
        let (m, n, k) = (a.rows, b.cols, a.cols);
        if !accumulate {
            dst.fill(Self::ZERO);
        }
        for i in 0..m {
            let row = &mut dst[i * n..(i + 1) * n];
            for p in 0..k {
                let x = alpha.mul(a.data[i * a.rs + p * a.cs]);
                for (j, d) in row.iter_mut().enumerate() {
                    *d = d.add(x.mul(b.data[p * b.rs + j * b.cs]));
                }
            }
        }
        let _ = threads;
        Ok(())
    }
}

/// Checks that the shapes agree and every view lies in its slice.
fn check<T>(dst: &[T], a: &Mat<'_, T>, b: &Mat<'_, T>) -> Result<(), OpError> {
    if a.cols != b.rows {
        bail!("matrix product of {}x{} and {}x{}: inner dims differ", a.rows, a.cols, b.rows, b.cols);
    }
    if a.rows.checked_mul(b.cols) != Some(dst.len()) {
        bail!("matrix product of {}x{} by {}x{} into {} elements", a.rows, a.cols, b.rows, b.cols, dst.len());
    }
    if !a.in_bounds() || !b.in_bounds() {
        bail!("matrix view out of the bounds of its data");
    }
    Ok(())
}

macro_rules! int_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            #[inline]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
        }
    )*};
}
int_scalar!(i32, i64);

macro_rules! float_scalar {
    ($($t:ty),*) => {$(
        impl GemmFloat for $t {}
        impl Scalar for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn gemm(dst: &mut [Self], a: Mat<'_, Self>, b: Mat<'_, Self>, alpha: Self, accumulate: bool, threads: bool) -> Result<(), OpError> {
                check(dst, &a, &b)?;
                let (m, n, k) = (a.rows, b.cols, a.cols);
                if m == 0 || n == 0 {
                    return Ok(());
                }
                if k == 0 {
                    if !accumulate {
                        dst.fill(0.0);
                    }
                    return Ok(());
                }
                let work = m.saturating_mul(n).saturating_mul(k);
                let par = if threads && work >= THREADING_THRESHOLD {
                    gemm::Parallelism::Rayon(rayon::current_num_threads())
                } else {
                    gemm::Parallelism::None
                };
                gemm_raw(dst, a, b, alpha, accumulate, par);
                Ok(())
            }
        }
    )*};
}
float_scalar!(f32, f64);

/// The types `gemm::gemm` computes in (it panics on any other).
trait GemmFloat: Scalar {}

/// Calls `gemm::gemm` for f32 or f64 on views that [`check`] accepted.
#[allow(unsafe_code)]
fn gemm_raw<T: GemmFloat>(
    dst: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    alpha: T,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let s = |x: usize| x as isize;
    // SAFETY: `gemm` reads `lhs[i * lhs_rs + p * lhs_cs]` for i < m, p < k, `rhs[p * rhs_rs +
    // j * rhs_cs]` for p < k, j < n, and reads and writes `dst[i * n + j]`. `check` (run by
    // the only caller, `Scalar::gemm` for f32 and f64) proved a.cols == b.rows, m * n ==
    // dst.len() and that the last element of each view, hence every element (the strides are
    // non-negative), lies inside its slice; the isize casts cannot wrap since the offsets are
    // below slice lengths. `dst` is a unique borrow, so it aliases neither input, and its
    // row-major layout (rs = n, cs = 1) maps distinct (i, j) to distinct elements, so threads
    // write disjoint memory. `T: GemmFloat` is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(n),
            accumulate,
            a.data.as_ptr(),
            s(a.cs),
            s(a.rs),
            b.data.as_ptr(),
            s(b.cs),
            s(b.rs),
            T::ONE,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

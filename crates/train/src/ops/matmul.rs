//! Matrix products on strided views of slices, through the gemm crate (the kernels candle's
//! own CPU matmul uses).

pub use gemm::Parallelism;

use super::Real;

/// A strided matrix inside a slice: element (r, c) is `data[offset + r * row_stride + c *
/// col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major block; panics unless it lies inside `data`.
    pub fn new(data: &'a [T], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(rows > 0 && cols > 0 && offset + (rows - 1) * row_stride + cols <= data.len());
        MatRef {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `lhs · rhs` as a row-major `lhs.rows × rhs.cols` matrix, on the calling thread.
pub fn matmul<T: Real>(lhs: MatRef<T>, rhs: MatRef<T>) -> Vec<T> {
    let mut out = vec![T::zero(); lhs.rows * rhs.cols];
    matmul_into(&mut out, lhs, rhs, false, Parallelism::None);
    out
}

/// `out = lhs · rhs`, or `out += lhs · rhs` with `accumulate`; `out` is row-major
/// `lhs.rows × rhs.cols`.
pub fn matmul_into<T: Real>(
    out: &mut [T],
    lhs: MatRef<T>,
    rhs: MatRef<T>,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(k == rhs.rows && out.len() == m * n);
    // SAFETY: gemm reads lhs and rhs only at the positions their views describe, which
    // MatRef::new checked to lie inside their slices (transposing swaps the strides with the
    // sizes), and writes the m × n row-major `out`. T is f32 or f64, which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

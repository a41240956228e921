"""``FactoredMatrix``: a matrix kept as the product ``A @ B`` of two thin factors.

TransformerLens's ``FactoredMatrix`` (3.9) on NumPy: same operations, shapes and
numbers, with NumPy arrays where TransformerLens gives tensors (torch tensors are
accepted as factors and operands). A head's OV circuit ``W_V @ W_O`` is
[d_model, d_model] but of rank d_head; keeping the factors makes products,
SVDs, norms and eigenvalues cost O(d_model * d_head^2) instead of O(d_model^3).

Shape legend: ``...`` = leading (batch) dims, broadcast between A and B as in
NumPy; l = ldim (rows), m = mdim (the hidden, inner dim), r = rdim (columns).
  A [..., l, m]   B [..., m, r]   AB [..., l, r]   BA [..., r, l] (l == r only)
  svd(): U [..., l, k]  S [..., k]  V [..., r, k], k <= m, with AB = U diag(S) V^T
"""
import warnings
from functools import cached_property

import numpy as np

from .utils import to_numpy


def _matrix(x, what):
    a = to_numpy(x)
    if a.ndim < 2:
        raise ValueError(f"FactoredMatrix: {what} must have at least 2 dims [..., rows, cols], "
                         f"got shape {a.shape}")
    return a


def _t(x):
    """Swap the last two axes (a view)."""
    return np.swapaxes(x, -1, -2)


class FactoredMatrix:
    """The matrix ``A @ B`` (A [..., ldim, mdim], B [..., mdim, rdim]) without forming it.

    Leading dims broadcast. ``fm @ x`` and ``x @ fm`` with a matrix give a new
    FactoredMatrix (the cheaper of the two re-factorings, as TransformerLens),
    with a vector they give an array; ``.AB`` forms the product.
    """

    # NumPy defers ``ndarray @ fm`` (and other binary ops) to our reflected methods
    __array_ufunc__ = None

    def __init__(self, A, B):
        A, B = _matrix(A, "A"), _matrix(B, "B")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"Factored matrix must match on inner dimension, shapes were "
                             f"a: {A.shape}, b: {B.shape}")
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        try:
            lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except ValueError as e:
            raise ValueError(f"Shape mismatch: cannot broadcast leading dimensions. A has shape "
                             f"{A.shape}, B has shape {B.shape}") from e
        self.shape = lead + (self.ldim, self.rdim)
        self.A = np.broadcast_to(A, lead + A.shape[-2:])
        self.B = np.broadcast_to(B, lead + B.shape[-2:])

    # ----------------------------------------------------------------- products
    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = to_numpy(other)
        if other.ndim < 2:
            if other.shape[-1:] != (self.rdim,):
                raise ValueError(f"vector of shape {other.shape} does not match rdim {self.rdim} "
                                 f"of a FactoredMatrix of shape {self.shape}")
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise ValueError(f"Right matrix must match on inner dimension, shapes were self: "
                             f"{self.shape}, other: {other.shape}")
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        other = to_numpy(other)
        if other.ndim < 1 or other.shape[-1] != self.ldim:
            raise ValueError(f"Left matrix must match on inner dimension, shapes were self: "
                             f"{self.shape}, other: {other.shape}")
        if other.ndim < 2:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar):
        """Scalar times the matrix (scales A)."""
        if not isinstance(scalar, (int, float)):   # Python numbers stay weakly typed
            scalar = to_numpy(scalar)
            if scalar.size != 1:
                raise ValueError(f"Tensor must be a scalar for use with * but was of shape "
                                 f"{scalar.shape}. For matrix multiplication, use @ instead.")
            scalar = scalar.reshape(())
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    @property
    def AB(self):
        """The product [..., ldim, rdim] (formed: costs l * m * r per matrix)."""
        return self.A @ self.B

    @property
    def BA(self):
        """The reverse product [..., rdim, ldim]; only for square matrices (ldim == rdim)."""
        if self.rdim != self.ldim:
            raise ValueError(f"Can only take BA if ldim==rdim, shapes were self: {self.shape}")
        return self.B @ self.A

    @property
    def T(self):
        """The transpose, as the FactoredMatrix (B^T, A^T)."""
        return FactoredMatrix(_t(self.B), _t(self.A))

    @property
    def pair(self):
        """The factors ``(A, B)``."""
        return self.A, self.B

    @property
    def ndim(self):
        """Number of dims, leading dims included."""
        return len(self.shape)

    # ---------------------------------------------------------------- spectrum
    @cached_property
    def _svd(self):
        # SVD of each factor, then of the small core between them:
        # AB = Ua diag(Sa) Vha Ub diag(Sb) Vhb = Ua (Um diag(Sm) Vhm) Vhb
        Ua, Sa, Vha = np.linalg.svd(self.A, full_matrices=False)   # [..,l,k1] [..,k1] [..,k1,m]
        Ub, Sb, Vhb = np.linalg.svd(self.B, full_matrices=False)   # [..,m,k2] [..,k2] [..,k2,r]
        core = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]    # [.., k1, k2]
        Um, Sm, Vhm = np.linalg.svd(core, full_matrices=False)     # [..,k1,k] [..,k] [..,k,k2]
        return Ua @ Um, Sm, _t(Vhb) @ _t(Vhm)

    def svd(self):
        """``(U, S, V)`` with ``AB == U @ diag(S) @ V^T`` (V, not V^T, as TransformerLens);
        singular values in descending order, computed from the factors only."""
        return self._svd

    @property
    def U(self):
        """Left singular vectors [..., ldim, k]."""
        return self._svd[0]

    @property
    def S(self):
        """Singular values [..., k], descending."""
        return self._svd[1]

    @property
    def V(self):
        """Right singular vectors [..., rdim, k]: ``AB == U @ diag(S) @ V^T``."""
        return self._svd[2]

    @property
    def Vh(self):
        """Deprecated alias of :attr:`V` (returns V, not V^T), as in TransformerLens."""
        warnings.warn("FactoredMatrix.Vh has always returned V (right singular vectors), not Vh. "
                      "Use .V for the canonical name; for the actual transpose use "
                      ".V.swapaxes(-1, -2).", DeprecationWarning, stacklevel=2)
        return self._svd[2]

    @property
    def eigenvalues(self):
        """Eigenvalues [..., mdim] (complex) of BA, which are those of AB apart from zeros:
        if BA v = k v then AB (A v) = k (A v)."""
        ev = np.linalg.eigvals(self.BA)   # real dtype when every eigenvalue is real
        return ev.astype(np.result_type(ev.dtype, np.complex64))

    def norm(self):
        """Frobenius norm [...]: sqrt of the sum of squared singular values."""
        return np.sqrt((self.S ** 2).sum(-1))

    def make_even(self):
        """The same matrix as (U sqrt(S), sqrt(S) V^T): both factors carry half the spectrum
        and have orthogonal columns / rows."""
        root = np.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _t(self.V))

    def collapse_l(self):
        """diag(S) V^T [..., k, rdim]: the matrix with its left orthogonal factor U dropped."""
        return self.S[..., :, None] * _t(self.V)

    def collapse_r(self):
        """U diag(S) [..., ldim, k]: the matrix with its right orthogonal factor V^T dropped."""
        return self.U * self.S[..., None, :]

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, idx):
        """Index the leading dims; one or two more indices select rows and then columns
        (an int keeps its axis, as TransformerLens)."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        n = len([i for i in idx if i is not None])
        lead = len(self.shape) - 2
        if n <= lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n == lead + 1:
            idx = idx[:-1] + (_keep_axis(idx[-1]),)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if n == lead + 2:
            idx = idx[:-2] + (_keep_axis(idx[-2]), _keep_axis(idx[-1]))
            return FactoredMatrix(self.A[idx[:-1]], self.B[idx[:-2] + (slice(None), idx[-1])])
        raise ValueError(f"{idx} is too long an index for a FactoredMatrix with shape {self.shape}")

    def get_corner(self, k=3):
        """The top-left k x ... x k corner of the product (every dim cut to k), formed."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def unsqueeze(self, k):
        """A new size-1 leading dim at ``k`` (torch's ``unsqueeze`` on both factors)."""
        return FactoredMatrix(np.expand_dims(self.A, k), np.expand_dims(self.B, k))

    def __repr__(self):
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"


def _keep_axis(i):
    """An int index as the length-1 slice that selects it (so the axis stays)."""
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
        i = int(i)
        return slice(i, i + 1 if i != -1 else None)
    return i

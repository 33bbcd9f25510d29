"""fastmixer.kernels: Triton kernels only (one file per fused op). Import through fastmixer.ops, never directly from
the model."""

"""DeblurGAN-v2 generator architectures (no image I/O here: tensors in, tensors out)."""

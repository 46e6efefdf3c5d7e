"""Gaggle artifacts: .swu images in S3-compatible storage, parsed and served."""

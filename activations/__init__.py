"""Subject models, hook points, corpora, and the HDF5 activation cache."""

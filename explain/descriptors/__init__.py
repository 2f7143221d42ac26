"""Descriptor discovery (Mondal et al. 2024) on every basis: descriptors per document, clustered into a
vocabulary (`build`), assigned to the features of any dictionary from their top documents, with
consistency and precision@K (`describe`, `assign`), and probe dictionaries whose truth is known (`probe`)."""

"""One module per dictionary kind (inference form); `sae.registry` maps each `kind` to its class."""

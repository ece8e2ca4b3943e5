"""Code shared by the gateway and every stage service: contract, image codec, model store, tiling."""

"""Training losses as pure functions over tensors (:mod:`.functional`) and the label-free objective built from
them (:mod:`.objectives`)."""

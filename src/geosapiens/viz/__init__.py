"""Pictures: OpenCV drawing (:mod:`.draw`) and Matplotlib plots (:mod:`.plots`)."""

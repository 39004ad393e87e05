"""The parts the compression methods are built from: group scores and magnitude masks
(``pruning``), regularisers (``regularizers``; PRUNIX's ``sawtooth``), pruners and projections
(``apa``, ``lgd``), clustering (``scic``), network purification and unused path removal
(``purification``), quantisation (``quantize``). They never import a method
(:mod:`xbarprune.compress.methods`)."""

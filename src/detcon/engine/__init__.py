"""Pieces of the pretraining job kept out of :mod:`detcon.train` so its loop stays readable:
reproducible data order (:mod:`.data`), the forward + loss of one step (:mod:`.step`),
checkpoint / RNG / signal state (:mod:`.state`)."""

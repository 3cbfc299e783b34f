"""Evaluation, free of Dagster: references, their lookup, metrics and reports.

``loaders`` turns any reference file into one ``Reference`` (``references``), with the
formats in ``formats``; ``lookup`` finds an episode's references and ``feed_transcript``
fetches the publisher's; ``metrics`` (WER, DER) and ``speaker_metrics`` (cpWER, WDER) score
the pipeline's output and ``reports`` builds the per-episode record every caller scores
with; ``normalise`` holds the text normalisation both sides share. Import the module you
need: pyannote.metrics is imported only when DER is computed.
"""

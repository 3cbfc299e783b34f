"""Speaker naming (issue 6): SPEAKER_xx labels → real names, never invented.

* ``embeddings``: one voiceprint per diarisation label of an episode (mean GE2E
  embedding over the label's turns), stored once in ``speakers/{key}.embeddings.json``
  so that re-naming never decodes audio again.
* ``registry``: known voices (``speakers/registry.json``), from enrolment audio or from
  labels a person confirmed.
* ``metadata``: guest names parsed from an episode's title and description.
* ``assign``: the decision (registry match, recurring host, guests by elimination)
  with a confidence and the evidence behind every name.
* ``service``: the storage-level operations the Dagster asset and the CLI share.
"""

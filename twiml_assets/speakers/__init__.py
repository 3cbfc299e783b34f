"""Speaker naming: SPEAKER_xx labels → real names from voices and episode metadata.

Names are never invented: a label keeps its SPEAKER_xx name unless the evidence (a
confirmed label, a registered or recurring voice, a guest named in the metadata) is
confident enough. ``service`` holds what the Dagster asset and the CLI share.
"""

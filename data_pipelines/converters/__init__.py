"""Converters from raw corpora to `data_pipelines.schema.Example` records, one module a source format, behind
the command line `python -m data_pipelines.build`:

    llava_json   LLaVA / Ola JSON or JSON Lines with media files (or Ola's patch files)
    asr_folder   LibriSpeech-layout folders of transcripts and recordings
    tfds         TFDS datasets prepared in array_record format
    reencode     media files -> `schema.Media`, re-encoded only when the schema lacks their format
    writer       `Skip` (an entry that cannot become an example), `write_shards` and its `Summary`

Each converter yields one callable per input entry that returns the example or raises `Skip`.
"""

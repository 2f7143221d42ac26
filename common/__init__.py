"""What every stage shares and nothing else owns: one-line user errors (`errors`), run state (`runstate`: atomic
fsynced records, output locks, settings checks, `replace_atomically`) and command-line options built from settings
dataclasses (`options`). The lowest layer: it imports nothing of the toolkit, so every package may import it."""

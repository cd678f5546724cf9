"""A test-local encoder for the sweep's kill test, loaded with `encoder_module: blocking_encoder`: the
BERT encoder, which appends a line to $BLOCKING_LOG each time it encodes a corpus, and, while the file
$BLOCKING_FLAG exists, then writes $BLOCKING_MARKER and blocks there until the process is killed."""

import os
import time
from pathlib import Path

from encoders import register_encoder
from encoders.bert import BertEncoder


@register_encoder("blocking")
class BlockingEncoder(BertEncoder):
    def encode(self, texts, desc="encoding", **kw):
        if desc == "corpus":
            with open(os.environ["BLOCKING_LOG"], "a") as f:
                f.write("corpus\n")
            if Path(os.environ["BLOCKING_FLAG"]).exists():
                Path(os.environ["BLOCKING_MARKER"]).write_text(str(os.getpid()))
                while True:
                    time.sleep(1)
        return super().encode(texts, desc=desc, **kw)

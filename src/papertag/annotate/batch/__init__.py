"""``annotate --annotator llm --batch``: OpenAI's Batch API (or any server with ``/v1/files``
and ``/v1/batches``), at half the price of live calls.

A batch is the live run's first requests, byte for byte, one line per request with a
``custom_id``. Every step is written to the database before the next one starts: the
batch and its papers (``prepared``), the uploaded file's id (``uploaded``), the batch's
id (the server's status from then on). A run killed anywhere therefore finds on its
next start what the server already has: a file whose batch may or may not have been
created is looked up among the server's batches before one is created, so a batch is
never created twice; a paper in an open batch is never sent again.

Collecting a finished batch stores each answer as a paid ``llm_calls`` row (at the
batch price) in the same transaction that closes the batch. The live engine then runs
over those papers and replays the stored answers instead of sending their requests
(the same mechanism that resumes a killed live run), so every answer goes through the
live path: parse, validate, re-ask with the validation error (live), store. Lines in
the error file, and papers of an expired, failed or cancelled batch that got no
answer, are sent again: in a follow-up batch with ``--batch``, live otherwise.
"""

from .batches import STEPS, Batches
from .info import BatchError, BatchInfo, BatchReport, find_batch, has_open, list_batches
from .requests import request_bodies
from .run import annotate_with_batches, cancel_batch

__all__ = [
    "STEPS",
    "BatchError",
    "BatchInfo",
    "BatchReport",
    "Batches",
    "annotate_with_batches",
    "cancel_batch",
    "find_batch",
    "has_open",
    "list_batches",
    "request_bodies",
]

"""Named datasets: the book's data under short names, downloaded once into the cache.

One table for every task, so `--data sms-spam`, `--data book-instructions` and `--data book-preferences` are
found the same way and a new one is a line here. A `--data` value that is an existing path is always the
user's file; a name is looked up only when no such path exists, and a name of another task's kind is refused
with the list of the right ones (a preference file is not a classification dataset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scratchllm.errors import ScratchLLMError

_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/"


@dataclass(frozen=True)
class NamedDataset:
    name: str
    kind: str  # which task reads it: labelled (classify), instructions (instruct, respond), preferences (dpo)
    url: str
    file: str  # the file's name in the cache
    archive: str | None = None  # the url is a zip archive, cached under this name ...
    member: str | None = None  # ... that holds the file as this member
    columns: tuple[str, str, str] | None = None  # labelled data: (text column, label column, format)
    about: str = ""


DATASETS = {d.name: d for d in (
    NamedDataset("sms-spam", "labelled", "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                 "SMSSpamCollection.tsv", archive="sms_spam_collection.zip", member="SMSSpamCollection",
                 columns=("1", "0", "tsv"),
                 about="the UCI SMS Spam Collection (book ch. 6): 5,572 texts, ham or spam"),
    NamedDataset("book-instructions", "instructions", _BOOK + "01_main-chapter-code/instruction-data.json",
                 "instruction-data.json", about="the book's 1,100 instruction records (ch. 7)"),
    NamedDataset("book-preferences", "preferences",
                 _BOOK + "04_preference-tuning-with-dpo/instruction-data-with-preference.json",
                 "instruction-data-with-preference.json",
                 about="the book's 1,100 records with chosen and rejected responses (ch. 7 bonus, DPO)"),
)}  # fmt: skip


def named(data: str, kind: str) -> NamedDataset | None:
    """The named dataset `data` stands for (None when it is a path), refused when it is of another kind."""
    if Path(data).exists():
        return None
    found = DATASETS.get(data)
    if found is None or found.kind != kind:
        names = ", ".join(d.name for d in DATASETS.values() if d.kind == kind)
        raise ScratchLLMError(f"--data {data}: no such file, and not a named {kind} dataset ({names})")
    return found


def cache_path(dataset: NamedDataset) -> Path:
    from scratchllm.hub import cache_dir

    return cache_dir() / "datasets" / dataset.name / dataset.file


def local_path(data: str, kind: str) -> Path:
    """Where `--data`'s file is or will be once fetched, without fetching: what an output may not overlap."""
    found = named(data, kind)
    return Path(data) if found is None else cache_path(found).parent


def dataset_file(data: str, kind: str) -> Path:
    """The file behind `--data`: the user's path as given, or a named dataset's cached copy (fetched once)."""
    found = named(data, kind)
    return Path(data) if found is None else fetch(found)


def fetch(dataset: NamedDataset) -> Path:
    import zipfile

    from scratchllm.files import atomic_write
    from scratchllm.hub import download_file

    target = cache_path(dataset)
    if target.exists():
        return target
    if dataset.archive is None:
        return download_file(dataset.url, target)
    archive = download_file(dataset.url, target.with_name(dataset.archive))
    try:
        with zipfile.ZipFile(archive) as z:
            data = z.read(dataset.member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ScratchLLMError(f"{archive}: not the {dataset.name} archive ({e}); delete it and retry") from None
    atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target

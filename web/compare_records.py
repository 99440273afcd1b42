"""Which validation record each model of the Compare page shows.

A record is chosen among the first chosen model's validation records; a model trained on
another dataset gets the record with the same identity (case and image, the record's name)
there, never whatever sits under the same key (keys are positions, not identities). ``backend``
is the views' ``web.backend.Backend``.
"""
from __future__ import annotations

from caffeseg.web.backend import Unavailable
from caffeseg.web.inference_store import val_records


def same_record_everywhere(backend, jobs: list[dict], key: str):
    """``(job, key in its dataset, refusal)`` per model: ``key`` names a record of the first model's
    dataset; a model trained on another dataset gets the record of the same name there, or a
    refusal saying why it has none."""
    first = next((j for j in jobs if j.get("dataset_id")), None)
    by_key = {r["key"]: r for r in val_records(backend, first)} if first else {}
    chosen = by_key.get(key)
    name = chosen.get("name") if chosen else None
    for job in jobs:
        if first is None or job.get("dataset_id") == first.get("dataset_id"):
            yield job, key, None
            continue
        if not name or name == key:
            yield job, None, ("Not compared: this model was trained on another dataset, and the record has no case/image "
                              "name to find it there (keys are positions, not identities).")
            continue
        match = next((r["key"] for r in val_records(backend, job) if r.get("name") == name), None)
        if match is None:
            yield job, None, (f"Not compared: this model was trained on another dataset, whose validation set has "
                              f"no record {name}.")
        else:
            yield job, match, None


def records_offered(backend, model_ids: list[str]) -> dict:
    """``{records: [{key, name}], note}``: the validation records offered for ``model_ids``, those
    of the first chosen model's dataset (the note says when the others were trained on another)."""
    if not model_ids:
        return {"records": [], "note": "Tick a model to list the records of its validation set."}
    jobs = []
    for model_id in model_ids:
        try:
            jobs.append(backend.job(model_id))
        except (Unavailable, LookupError, ValueError):
            continue
    first = next((j for j in jobs if j.get("dataset_id")), None)
    if first is None:
        return {"records": [], "note": "The chosen models have no dataset, so no validation records."}
    records = [{"key": r["key"], "name": r.get("name") or r["key"]} for r in val_records(backend, first)]
    others = [j.get("name") or j["id"] for j in jobs if j.get("dataset_id") and j["dataset_id"] != first["dataset_id"]]
    if not records:
        note = f"The dataset of {first.get('name') or first['id']} has no validation records."
    elif others:
        note = (f"Records of {first.get('name') or first['id']}'s dataset; {', '.join(others)} "
                "were trained on another dataset: there the record with the same case and image is used, "
                "or the model is left out with the reason.")
    else:
        note = f"{len(records)} records of the validation set of {first.get('name') or first['id']}'s dataset."
    return {"records": records, "note": note}

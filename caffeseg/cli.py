"""``caffeseg``: the command line of the workbench (the same jobs service the web uses).

The composition root: it imports ``jobs`` and, for ``serve``, ``web``; nothing imports it.

Exit codes: 0 success; 1 the job ran but ended Error, Aborted or Interrupted; 2 bad input
(unknown job, bad option, refused network, an unknown or broken data plugin).
Every command takes ``--data DIR`` (default ``$CAFFESEG_DATA`` or ``~/.caffeseg``): jobs live
in ``DIR/jobs``, the sample phantom in ``DIR/sample``. ``--json`` prints machine-readable output.
"""
import argparse
import dataclasses
import json
import os
import sys

from caffeseg.jobs.pretrained import PretrainedError

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    def __init__(self, message, code=EXIT_BAD_INPUT):
        Exception.__init__(self, message)
        self.code = code


def data_root(args):
    from caffeseg.jobs.paths import default_data_dir
    return os.path.abspath(os.path.expanduser(args.data)) if args.data else default_data_dir()


def service(args):
    from caffeseg.jobs.service import JobService
    text = getattr(args, "gpus", None) or ""
    gpus = "auto" if text.strip() == "auto" else [int(g) for g in text.split(",") if g.strip()]
    return JobService(os.path.join(data_root(args), "jobs"), backend=getattr(args, "backend", None) or "auto",
                      cpu_slots=getattr(args, "slots", None) or 1, gpus=gpus)


def emit(args, obj, text=None):
    if args.json:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        print(text if text is not None else obj)


def job_line(job):
    return "%-22s %-8s %-12s %s" % (job["id"], job["kind"], job["status"], job["name"])


# -- commands ----------------------------------------------------------------------------------

def cmd_jobs(args):
    jobs = service(args).list_jobs(args.kind)
    emit(args, jobs, "\n".join(job_line(j) for j in jobs) or "(no jobs)")


def _when(seconds):
    """Epoch seconds as local date and time (what a person reads); None as '-'."""
    import datetime
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(float(seconds)).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(float(seconds)))
    return "%dh %02dm %02ds" % (seconds // 3600, seconds % 3600 // 60, seconds % 60) if seconds >= 3600 \
        else "%dm %02ds" % (seconds // 60, seconds % 60)


def show_text(job):
    """``caffeseg model show`` for a person: dates, durations, history and snapshots on their own lines."""
    lines = ["%s  %s  (%s, %s)" % (job["id"], job["name"], job["kind"], job["status"])]
    fields = [("group", job.get("group_name")), ("dataset", job.get("dataset_id")),
              ("created", _when(job.get("created_at"))), ("updated", _when(job.get("updated_at"))),
              ("progress", None if job.get("progress") is None else "%.0f %%" % (100 * job["progress"])),
              ("eta", _duration(job["eta"]) if job.get("eta") is not None else None),
              ("error", job.get("error")), ("notes", job.get("notes")), ("folder", job.get("dir"))]
    trained_on = job.get("trained_on") or {}
    if trained_on:
        fields.append(("trained on", " ".join(str(trained_on[k]) for k in ("name", "version", "device")
                                              if trained_on.get(k))))
    lines += ["  %-10s %s" % (k, v) for k, v in fields if v not in (None, "")]
    if job.get("options"):
        lines.append("  options    " + ", ".join("%s=%s" % (k, v) for k, v in sorted(job["options"].items())
                                                  if not isinstance(v, (dict, list)) and v not in (None, "")))
    if job.get("history"):
        lines.append("  history")
        lines += ["    %-12s %s" % (status, _when(at)) for status, at in job["history"]]
    if job.get("snapshots"):
        lines.append("  snapshots  " + ", ".join("iteration %d" % it for it, _name in job["snapshots"]))
    return "\n".join(lines)


def cmd_show(args):
    job = service(args).show(args.job_id)
    emit(args, job, show_text(job))


def cmd_delete(args):
    service(args).delete(args.job_id)
    emit(args, {"deleted": args.job_id}, "deleted %s" % args.job_id)


def cmd_job_edit(args):
    """Rename a job, set its notes or its group ("" clears), as DIGITS' PUT /jobs/<id>."""
    fields = {k: getattr(args, k) for k in ("name", "notes", "group_name") if getattr(args, k) is not None}
    if not fields:
        raise CliError("give --name, --notes and/or --group")
    job = service(args).edit(args.job_id, **fields)
    emit(args, job, "%s  %s  group=%s  notes=%s" % (job["id"], job["name"], job["group_name"] or "-",
                                                   job["notes"] or "-"))


def cmd_job_bulk(args):
    """abort / delete / group several jobs; each is done on its own, refusals are listed."""
    result = service(args).bulk(args.action, args.job_ids, group_name=args.group)
    lines = ["%s %s" % (args.action, j) for j in result["done"]]
    lines += ["refused %s: %s" % (j, why) for j, why in sorted(result["errors"].items())]
    emit(args, result, "\n".join(lines))
    return EXIT_OK if not result["errors"] else EXIT_BAD_INPUT


def details_text(job, details):
    lines = ["%s  %s  (%s, %s)" % (job["id"], job["name"], job["kind"], job["status"]),
             "  folder     %s (%.1f MiB)" % (details["folder"], details["disk_bytes"] / float(1 << 20))]
    if details.get("owner"):
        lines.append("  owner      %s" % details["owner"])
    lines.append("  timeline")
    lines += ["    %-12s %s%s" % (t["status"], _when(t["time"]),
                                  "  (%s)" % _duration(t["duration"]) if t["duration"] is not None else "")
              for t in details["timeline"]]
    if details["related"]:
        lines.append("  related")
        lines += ["    %-12s %s %s (%s)" % (r["relation"], r["id"], r["name"], r["status"]) for r in details["related"]]
    for p in details["pretrained"]:
        lines.append("  pretrained %s [%s%s]%s" % (p["path"], p["source"], " " + p["job_id"] if p.get("job_id") else "",
                                                 "" if p["exists"] else " (missing)"))
    return "\n".join(lines)


def cmd_job_details(args):
    svc = service(args)
    job = svc.show(args.job_id)
    details = svc.details(args.job_id, pretrained_dir=os.path.join(data_root(args), "pretrained"))
    emit(args, details, details_text(job, details))


def cmd_phantom(args):
    from caffeseg.plugin.sunnybrook import phantom
    out = os.path.abspath(args.out or os.path.join(data_root(args), "sample"))
    phantom.generate(out, cases=args.cases, seed=args.seed,
                     progress=_progress_bar("phantom") if not args.json else None)
    emit(args, {"path": out}, "phantom written to %s" % out)


# The Sunnybrook plugin's fields as their own options (the lab's commands); any plugin's fields,
# Sunnybrook's included, also as --set FIELD=VALUE.
SUNNYBROOK_OPTIONS = {"image_folder": "image_folder", "contour_folder": "contour_folder",
                      "channels": "channel_conversion", "val_pct": "val_percent", "split": "split_by", "seed": "seed"}


def _plugin_fields(plugin_id):
    from caffeseg.plugin.base import PluginError, get_plugin
    try:
        return {f.name: f for f in get_plugin(plugin_id).form_fields()}
    except PluginError as exc:
        raise CliError(str(exc))


def dataset_values(args):
    """The plugin's form values from the Sunnybrook options and --set FIELD=VALUE (raw text: the
    plugin's FormField.clean types them, as for the web form)."""
    fields = _plugin_fields(args.plugin)
    given = {option: getattr(args, option) for option in SUNNYBROOK_OPTIONS if getattr(args, option) is not None}
    if args.plugin == "sunnybrook":
        values = {SUNNYBROOK_OPTIONS[option]: value for option, value in given.items()}
    elif given:
        raise CliError("%s %s the Sunnybrook plugin's; give %s's fields as --set FIELD=VALUE (fields: %s)"
                       % (", ".join("--" + o.replace("_", "-") for o in given), "is" if len(given) == 1 else "are",
                          args.plugin, ", ".join(fields)))
    else:
        values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in fields:
            raise CliError("--set %s: give FIELD=VALUE with one of %s's fields: %s"
                           % (item, args.plugin, ", ".join(fields)))
        values[name.strip()] = value
    return values


def cmd_dataset_fields(args):
    fields = _plugin_fields(args.plugin)
    rows = [{"name": f.name, "kind": f.kind, "required": f.required, "default": f.default, "help": f.help,
             "choices": [c[0] for c in f.choices]} for f in fields.values()]
    emit(args, rows, "\n".join("%-22s %-7s %s%s" % (r["name"], r["kind"], r["help"],
                                                    " (one of %s)" % ", ".join(r["choices"]) if r["choices"] else "")
                               for r in rows))


def cmd_dataset_create(args):
    values = dataset_values(args)
    progress = _dataset_progress()
    job = service(args).create_dataset(args.plugin, values, args.name, encoding=args.encoding,
                                       label_encoding=args.label_encoding, progress=progress)
    emit(args, job, dataset_summary(job))


def dataset_summary(job, shown=20):
    """"dataset ID (name) Done: train 240, val 26; 3 records skipped:" and why, as the web page says."""
    from caffeseg.jobs.dataset import load_dataset_info
    try:
        info = load_dataset_info(job["dir"])
    except ValueError:
        return "dataset %s (%s) Done" % (job["id"], job["name"])
    counts = ", ".join("%s %d" % (s, v.get("count", 0)) for s, v in sorted((info.get("stages") or {}).items()))
    skipped = info.get("skipped") or []
    lines = ["dataset %s (%s) Done: %s; %d record%s skipped%s" % (
        job["id"], job["name"], counts, len(skipped), "" if len(skipped) == 1 else "s", ":" if skipped else "")]
    lines += ["  skipped: %s" % s.get("message") for s in skipped[:shown]]
    if len(skipped) > shown:
        lines.append("  ... %d more in %s" % (len(skipped) - shown, os.path.join(job["dir"], "log.txt")))
    return "\n".join(lines)


def cmd_dataset_import(args):
    job = service(args).import_dataset(args.folder, args.name)
    emit(args, job, "dataset %s (%s) imported" % (job["id"], job["name"]))


def _model_options(args):
    options = {"dataset_id": args.dataset, "name": args.name, "epochs": args.epochs, "base_lr": args.base_lr,
               "solver_type": args.solver, "mean": args.mean, "iter_size": args.iter_size,
               "snapshot_interval": args.snapshot_interval, "val_interval": args.val_interval,
               "set_num_output": args.set_num_output, "group_name": args.group, "notes": args.notes,
               "lr_policy": {"policy": args.lr_policy, "stepsize": args.stepsize, "stepvalue": args.stepvalue,
                             "gamma": args.gamma, "power": args.power}}
    for key in ("batch_size", "val_batch_size", "crop_size", "weight_decay", "random_seed", "rms_decay", "momentum"):
        if getattr(args, key) not in (None, ""):
            options[key] = getattr(args, key)
    if args.network_file:
        with open(args.network_file) as f:
            options["network_text"] = f.read()
    elif args.previous:
        options["previous_job_id"] = args.previous
    else:
        options["standard_network"] = args.network
    if args.python_layer:
        options["python_layer_files"] = args.python_layer
    if args.pretrained:
        options["pretrained"] = [os.path.abspath(p) for p in args.pretrained]
    # GPUs (jobs/gpus.py): the next N available, or these; the real-pycaffe backend takes one
    if getattr(args, "gpu_count", None) is not None:
        options["gpu_count"] = args.gpu_count
    if getattr(args, "use_gpus", None):
        options["gpus"] = args.use_gpus
    if getattr(args, "share_gpus", False):
        options["share_gpus"] = True
    if getattr(args, "backend_given", False):
        # Recorded on the job: only a scheduler/worker that can run this backend takes it.
        options["backend"] = args.backend
    return options


def cmd_model_create(args):
    svc = service(args)
    jobs = svc.create_model(_model_options(args))
    from caffeseg.jobs.model_job import job_warnings
    for job in jobs:  # what the options check let through but probably is not meant
        for warning in job_warnings(job["dir"]):
            print("warning: %s: %s" % (job["id"], warning), file=sys.stderr)
    if args.train:
        statuses = [_train_foreground(svc, j["id"]) for j in jobs]
        jobs = [svc.show(j["id"]) for j in jobs]
        emit(args, jobs, "\n".join(job_line(j) for j in jobs))
        return EXIT_OK if all(s == "Done" for s in statuses) else EXIT_JOB_FAILED
    if args.queue:
        for j in jobs:
            svc.submit(j["id"])
        jobs = [svc.show(j["id"]) for j in jobs]
        _queued_note(args, jobs)
    emit(args, jobs, "\n".join(job_line(j) for j in jobs))


def _queued_note(args, jobs):
    """Say on stderr which worker takes the Waiting jobs (``Scheduler.takes``)."""
    if args.json:
        return
    for backend in sorted({(j.get("options") or {}).get("backend") or "" for j in jobs}):
        print("queued: %s" % QUEUED_FOR[backend], file=sys.stderr)


# Which worker takes a Waiting model job, by its recorded backend (jobs.scheduler.Scheduler.takes).
QUEUED_FOR = {
    "pycaffe": "a pycaffe worker takes it (`caffeseg --backend pycaffe worker`, "
               "`python3 -m caffeseg.jobs.worker --backend pycaffe`, docker compose's pycaffe-worker)",
    "engine": "an engine worker takes it (`caffeseg --backend engine worker`, or the app's worker)",
    "auto": "any worker takes it",
    "": "the app's worker (`caffeseg serve`) or an engine worker (`caffeseg worker`) takes it",
}


def _progress_bar(desc):
    from tqdm import tqdm
    bar = {}

    def update(done, total=None):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        if total and bar["bar"].total != total:
            bar["bar"].total = total
        bar["bar"].n = done
        bar["bar"].refresh()
    return update


def _dataset_progress():
    """The dataset builder reports events {done_all, total_all, ...}: show them as one bar."""
    update = _progress_bar("building dataset")
    return lambda event: update(event.get("done_all") or 0, event.get("total_all") or None)


def _train_foreground(svc, job_id, resume=False):
    from caffeseg.jobs.service import training_progress
    update = _progress_bar("training %s" % job_id)

    def on_progress(status):
        done, total = training_progress(status)
        if update and total:
            update(done, total)
    return svc.train(job_id, resume=resume, on_progress=on_progress, evaluate=True)


def cmd_model_train(args):
    if args.queue:
        svc = service(args)
        svc.submit(args.job_id)
        job = svc.show(args.job_id)
        _queued_note(args, [job])
        emit(args, {"id": args.job_id, "status": job["status"]}, "%s %s" % (args.job_id, job["status"]))
        return EXIT_OK
    status = _train_foreground(service(args), args.job_id)
    emit(args, {"id": args.job_id, "status": status}, "%s %s" % (args.job_id, status))
    return EXIT_OK if status == "Done" else EXIT_JOB_FAILED


def cmd_model_resume(args):
    svc = service(args)
    job = svc.show(args.job_id)
    status = svc.resume(args.job_id, wait=False) if args.queue else None
    if status is None:
        if job["status"] not in ("Interrupted", "Aborted", "Error"):
            raise CliError("job %s is %s; only Interrupted, Aborted or Error jobs resume" % (args.job_id, job["status"]))
        status = _train_foreground(svc, args.job_id, resume=True)
    emit(args, {"id": args.job_id, "status": status}, "%s %s" % (args.job_id, status))
    return EXIT_OK if status in ("Done", "Waiting") else EXIT_JOB_FAILED


def cmd_model_abort(args):
    signalled = service(args).abort(args.job_id)
    emit(args, {"id": args.job_id, "signalled": signalled}, "abort sent to %s" % args.job_id)


def cmd_model_metrics(args):
    m = service(args).metrics(args.job_id, since=args.since)
    rows = ["%d\t%s%s\t%g" % (i, (p + "/") if p else "", n, v) for i, n, v, p in m["series"] if v is not None]
    emit(args, m, "\n".join(rows))


def cmd_model_evaluate(args):
    table = service(args).evaluate(args.job_id, snapshot=args.snapshot)
    from caffeseg.evaluation_text import evaluation_report
    emit(args, table, evaluation_report(table))


def cmd_model_clinical_export(args):
    """Predicted contours (Sunnybrook text, zip) or DICOM SEG of an evaluation, written to --out."""
    name, _, data = service(args).clinical_export(args.job_id, args.format, snapshot=args.snapshot,
                                                  case=args.case, record=args.record)
    out = args.out or name
    if os.path.isdir(out):
        out = os.path.join(out, name)
    with open(out, "wb") as f:
        f.write(data)
    emit(args, {"path": out, "bytes": len(data)}, out)


def cmd_model_export(args):
    path = service(args).export(args.job_id, snapshot=args.snapshot, out=args.out, fmt=args.format)
    emit(args, {"path": path}, path)


def cmd_model_make_pretrained(args):
    """DIGITS' "Make Pretrained Model": the snapshot into DATA/pretrained (the web's Pretrained tab)."""
    entry = service(args).make_pretrained(args.job_id, os.path.join(data_root(args), "pretrained"),
                                          snapshot=args.snapshot, name=args.name)
    emit(args, entry, "pretrained model %s (%s) from %s" % (entry["id"], entry["name"], args.job_id))


def cmd_test_many(args):
    """Test Many in the foreground: per image its statistics; results.csv and class maps on disk."""
    svc = service(args)
    done = svc.test_many(args.job_id, snapshot=args.snapshot, folder=args.folder, list_file=args.list,
                         zip_path=args.zip, dataset_stage=args.dataset_stage, probabilities=args.probabilities,
                         resize=tuple(args.resize) if args.resize else None, wait=True)
    lines = ["%-40s %s" % (r["source"], r["error"] if r.get("error") else "LV area %d px, confidence %.3f%s" % (
        r["lv_area_px"], r["mean_confidence"], "  Dice %.3f" % r["dice"] if "dice" in r else ""))
             for r in done["rows"]]
    lines.append("%s: %d images, results in %s" % (done["status"]["state"], len(done["rows"]),
                                                   os.path.join(done["folder"], "results.csv")))
    emit(args, done, "\n".join(lines))
    return EXIT_OK if done["status"]["state"] == "Done" else EXIT_JOB_FAILED


def cmd_infer(args):
    result = service(args).infer(args.job_id, snapshot=args.snapshot, record=args.record, image_path=args.image)
    rows = []
    for i, r in enumerate(result["results"]):
        row = {"source": r["source"], "metrics": r.get("metrics"),
               "lv_area_px": int((r["class_map"] == 1).sum()), "contours": len(r["contours"])}
        if args.out:
            row["files"] = _write_prediction(args.out, i, r)
        rows.append(row)
    lines = []
    for row in rows:
        m = row["metrics"] or {}
        lines.append("%s  LV area %d px%s%s" % (row["source"], row["lv_area_px"],
                                               "  Dice %.3f  IoU %.3f" % (m["dice"], m["iou"]) if m else "",
                                               "  → %s" % ", ".join(row["files"]) if row.get("files") else ""))
    emit(args, {"snapshot": result["snapshot"], "results": rows}, "\n".join(lines))


def _write_prediction(out_dir, index, r):
    """class map PNG (0/1/2…), probabilities .npy, and each LV contour in Sunnybrook's format."""
    import cv2
    import numpy as np
    from caffeseg.jobs.infer import sunnybrook_contour_text
    os.makedirs(out_dir, exist_ok=True)
    stem = "%04d_%s" % (index, os.path.splitext(os.path.basename(r["source"].replace("record:", "")))[0])
    files = [os.path.join(out_dir, stem + "_classes.png"), os.path.join(out_dir, stem + "_probabilities.npy")]
    cv2.imwrite(files[0], r["class_map"].astype(np.uint8))
    np.save(files[1], r["probabilities"])
    for k, contour in enumerate(r["contours"]):
        path = os.path.join(out_dir, "%s_icontour-%d.txt" % (stem, k))
        with open(path, "w") as f:
            f.write(sunnybrook_contour_text(contour))
        files.append(path)
    return files


def installation(check_caffe=True):
    """What ``caffeseg info`` and ``caffeseg --version`` report (``jobs.server_info``, which the
    web's Info menu shows too): server, versions, the real Caffe found, plugins, CPU/GPUs."""
    from caffeseg.jobs.server_info import server_info
    return server_info(check_caffe=check_caffe)


def installation_text(info):
    from caffeseg.jobs.server_info import server_info_text
    return server_info_text(info)


def cmd_info(args):
    info = installation()
    emit(args, info, installation_text(info))


class _VersionAction(argparse.Action):
    """``caffeseg --version``: the ``info`` report, then exit (like argparse's own version action)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        argparse.Action.__init__(self, option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(installation_text(installation()))
        parser.exit()


def cmd_worker(args):
    from caffeseg.jobs import threads
    threads.apply_to_this_process("dataset")  # it builds datasets in its own threads; runners get theirs
    svc = service(args)
    print("worker on %s (Ctrl-C to stop)" % svc.root, file=sys.stderr)
    try:
        svc.scheduler.loop()
    except KeyboardInterrupt:
        pass


def cmd_serve(args):
    # This process answers the inference requests itself: its thread count and OpenMP wait
    # policy (jobs.threads) are set before anything loads torch, so a training keeps its cores.
    from caffeseg.jobs import threads
    threads.apply_to_this_process("inference")
    root = data_root(args)
    sample_folder(args)
    os.makedirs(os.path.join(root, "jobs"), exist_ok=True)
    from caffeseg.web import server
    config = {"JOBS_DIR": os.path.join(root, "jobs"), "DATA_DIR": root, "HOST": args.host, "PORT": args.port}
    if args.trusted_hosts:
        config["TRUSTED_HOSTS"] = args.trusted_hosts
    try:  # waitress; Werkzeug's debugger only with --dev (never from FLASK_DEBUG)
        server.serve(config, dev=args.dev)
    except ValueError as exc:
        raise CliError(str(exc))


def cmd_surgery(args):
    from caffeseg.jobs import surgery
    fn = {"alexnet-fcn": surgery.alexnet_to_fcn, "vgg16-fcn8s": surgery.vgg16_to_fcn8s}.get(args.kind)
    if fn is not None:
        report = fn(args.src, args.dst, num_classes=args.classes, gray=args.gray)
    else:
        convert = {"rgb-to-gray": surgery.rgb_to_gray_conv1, "gray-to-rgb": surgery.gray_to_rgb_conv1}[args.kind]
        report = convert(args.src, args.dst)
    emit(args, dataclasses.asdict(report), report.summary())


def cmd_pretrained(args):
    from caffeseg.jobs import pretrained
    store_dir = os.path.join(data_root(args), "pretrained")
    if args.import_archive:
        from caffeseg.jobs.pretrained_archive import import_archive
        entry = import_archive(store_dir, args.import_archive, name=args.name)
        emit(args, entry, "pretrained model %s (%s) from %s" % (entry["id"], entry["name"], args.import_archive))
        return
    if args.layers:
        from caffeseg.jobs.pretrained_archive import layer_table
        entry = pretrained.upload_entry(store_dir, args.layers)
        with open(entry["prototxt"]) as f:
            table = layer_table(entry["weights"], f.read())
        lines = ["%-20s %-16s %s  (%d)" % (r["name"], r["type"], " ".join("x".join(map(str, s)) for s in r["shapes"]),
                                         r["param_count"]) for r in table["layers"]]
        emit(args, table, "\n".join(lines + ["total parameters %d" % table["total"]]))
        return
    if args.name is None:
        rows = {k: {"file": m.filename, "url": m.url, "use": m.use} for k, m in pretrained.KNOWN_MODELS.items()}
        emit(args, rows, "\n".join("%-16s %s" % (k, m.description) for k, m in pretrained.KNOWN_MODELS.items()))
        return
    dest = args.dest or os.path.join(data_root(args), "pretrained")
    progress = _progress_bar("download") if not args.json else None
    if not args.prepare:
        path = pretrained.fetch(args.name, dest, url=args.url, progress=progress)
        emit(args, {"path": str(path)}, str(path))
        return
    # Fetch and make the weights a prototxt/ network starts from (surgery, gray conv1), in one go.
    path, report = pretrained.prepare(args.name, dest, gray=args.gray, num_classes=args.classes,
                                      url=args.url, progress=progress)
    summary = getattr(report, "__dict__", None)
    emit(args, {"path": str(path), "surgery": summary},
         "%s\n%s" % (path, report) if report is not None else "%s (used as downloaded)" % path)


LAB_NETWORKS = ("lab_fc", "lab_cnn", "fcn_alexnet", "fcn_alexnet_dice")  # titles: jobs.networks


def sample_folder(args, cases=None):
    """DATA/sample: the phantom release, generated on first use."""
    sample = os.path.join(data_root(args), "sample")
    if not os.path.isdir(os.path.join(sample, "challenge_training")):
        from caffeseg.plugin.sunnybrook import phantom
        print("generating the sample phantom into %s" % sample, file=sys.stderr)
        phantom.generate(sample, **({"cases": cases} if cases else {}))
    return sample


def cmd_lab(args):
    """The DIGITS medical-imaging lab on the phantom: dataset, then each lab network with a short
    schedule, evaluated; prints the results table."""
    from caffeseg.jobs import networks
    sample = sample_folder(args, args.cases)
    svc = service(args)
    values = {"image_folder": os.path.join(sample, "challenge_training"),
              "contour_folder": os.path.join(sample, "TrainingDataContours"),
              "channel_conversion": "L", "val_percent": 10, "split_by": "slice", "seed": args.seed}
    dataset = svc.create_dataset("sunnybrook", values, "lab sunnybrook", group_name="lab",
                                 progress=_dataset_progress())
    rows = []
    for network in LAB_NETWORKS:
        if args.only and network not in args.only:
            continue
        title = networks.title(network)
        [job] = svc.create_model({"dataset_id": dataset["id"], "standard_network": network, "name": "lab " + title,
                                  "epochs": args.epochs, "base_lr": args.base_lr, "group_name": "lab",
                                  "random_seed": args.seed, "batch_size": args.batch_size})
        status = _train_foreground(svc, job["id"])
        table = svc.evaluation(job["id"]) or {}
        dice = (table.get("summary") or {}).get("dice") or {}
        last_val = {}
        for it, name, value, phase in svc.metrics(job["id"])["series"]:
            if phase == "val":
                last_val[name] = value
        rows.append({"network": title, "job": job["id"], "status": status, "val": last_val,
                     "dice_mean": dice.get("mean"), "dice_std": dice.get("std")})
    lines = ["%-20s %-22s %-12s %-10s %-10s %s" % ("network", "job", "status", "val loss", "accuracy", "Dice (mean ± std)")]
    for r in rows:
        fmt = lambda v: "-" if v is None else "%.4f" % v
        lines.append("%-20s %-22s %-12s %-10s %-10s %s" % (
            r["network"], r["job"], r["status"], fmt(r["val"].get("loss")), fmt(r["val"].get("accuracy")),
            "-" if r["dice_mean"] is None else "%.3f ± %.3f" % (r["dice_mean"], r["dice_std"])))
    emit(args, rows, "\n".join(lines))
    return EXIT_OK if all(r["status"] == "Done" for r in rows) else EXIT_JOB_FAILED


# -- parser -------------------------------------------------------------------------------------

def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand must not reset what was given before it (caffeseg --data X jobs).
    common.add_argument("--data", default=argparse.SUPPRESS,
                        help="root folder for jobs and sample data (default $CAFFESEG_DATA or ~/.caffeseg, as the web app)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--backend", choices=("engine", "pycaffe", "auto"), default=argparse.SUPPRESS,
                        help="what trains: the PyTorch engine, real pycaffe, or pycaffe when importable")
    ap = argparse.ArgumentParser(prog="caffeseg", description=__doc__.split("\n")[0], parents=[common])
    ap.add_argument("--version", action=_VersionAction,
                    help="print caffeseg's, Python's and torch's versions, the real Caffe found, and exit")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("jobs", parents=[common], help="list jobs")
    p.add_argument("--kind", choices=("dataset", "model"))
    p.set_defaults(func=cmd_jobs)

    jb = sub.add_parser("job", help="edit jobs of any kind").add_subparsers(dest="sub", required=True)
    p = jb.add_parser("edit", parents=[common], help="rename, notes, group (\"\" clears notes/group)")
    p.add_argument("job_id")
    p.add_argument("--name")
    p.add_argument("--notes")
    p.add_argument("--group", dest="group_name")
    p.set_defaults(func=cmd_job_edit)
    p = jb.add_parser("bulk", parents=[common], help="abort, delete or group several jobs")
    p.add_argument("action", choices=("abort", "delete", "group"))
    p.add_argument("job_ids", nargs="+")
    p.add_argument("--group", default="", help="with group: the group to move them to (\"\": none)")
    p.set_defaults(func=cmd_job_bulk)
    p = jb.add_parser("details", parents=[common], help="status timeline, folder size, related jobs, pretrained used")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_job_details)

    p = sub.add_parser("phantom", parents=[common], help="write the synthetic Sunnybrook-like sample")
    p.add_argument("--out")
    p.add_argument("--cases", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_phantom)

    ds = sub.add_parser("dataset", help="dataset jobs").add_subparsers(dest="sub", required=True)
    p = ds.add_parser("create", parents=[common])
    p.add_argument("--plugin", default="sunnybrook", help="data plugin id (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a field of the plugin's form (list them: caffeseg dataset fields PLUGIN); repeatable")
    p.add_argument("--image-folder", help="Sunnybrook: the challenge_training folder (DICOM)")
    p.add_argument("--contour-folder", help="Sunnybrook: the expert contour folder")
    p.add_argument("--channels", choices=("L", "RGB"), help="Sunnybrook: channel conversion (default L)")
    p.add_argument("--val-pct", help="Sunnybrook: %% of records for validation (default 10)")
    p.add_argument("--split", choices=("slice", "patient"),
                   help="Sunnybrook: patient = whole patients in validation, for per-patient volumes/EF "
                        "(default); slice = DIGITS' split")
    p.add_argument("--seed", help="Sunnybrook: seed of the split (default 0)")
    p.add_argument("--encoding", choices=("none", "png", "jpg"), default="none",
                   help="feature storage: none (exact values), png (lossless), jpg (lossy, 8-bit images only)")
    p.add_argument("--label-encoding", choices=("none", "png"), default="none", help="label storage (lossless)")
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_dataset_create)
    p = ds.add_parser("fields", parents=[common], help="list a data plugin's form fields (for --set)")
    p.add_argument("plugin", nargs="?", default="sunnybrook")
    p.set_defaults(func=cmd_dataset_fields)
    p = ds.add_parser("import", parents=[common], help="register a built dataset folder (dataset.json)")
    p.add_argument("folder")
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_dataset_import)
    for name, func in (("show", cmd_show), ("delete", cmd_delete)):
        p = ds.add_parser(name, parents=[common])
        p.add_argument("job_id")
        p.set_defaults(func=func)
    p = ds.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_jobs, kind="dataset")

    md = sub.add_parser("model", help="model jobs").add_subparsers(dest="sub", required=True)
    p = md.add_parser("create", parents=[common])
    p.add_argument("--dataset", required=True, help="dataset job id")
    p.add_argument("--name", default="model")
    net = p.add_mutually_exclusive_group()
    net.add_argument("--network", default="fcn_alexnet", help="a standard network from prototxt/")
    net.add_argument("--network-file", help="a custom network prototxt")
    net.add_argument("--previous", help="a previous model job id whose network to reuse")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--base-lr", default="0.01", help="comma-separated for a sweep")
    p.add_argument("--batch-size", default=None, help="comma-separated for a sweep")
    p.add_argument("--val-batch-size", type=int)
    p.add_argument("--iter-size", type=int, default=1, help="batch accumulation")
    p.add_argument("--solver", default="SGD", choices=("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"))
    p.add_argument("--lr-policy", default="fixed",
                   choices=("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid"))
    p.add_argument("--stepsize", type=float, default=33, help="%% of training")
    p.add_argument("--stepvalue", default="50,85", help="%% of training, comma-separated")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--power", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, help="default base_lr/100 (what DIGITS used)")
    p.add_argument("--rms-decay", type=float, help="RMSProp's decay of the squared-gradient average (default 0.99)")
    p.add_argument("--momentum", type=float, help="default 0.9 (none for AdaGrad and RMSProp)")
    p.add_argument("--mean", choices=("none", "image", "pixel"), default="none")
    p.add_argument("--crop-size", type=int)
    p.add_argument("--snapshot-interval", type=float, default=1, help="epochs")
    p.add_argument("--val-interval", type=float, default=1, help="epochs")
    p.add_argument("--random-seed", type=int)
    p.add_argument("--set-num-output", action="store_true", help="score layers get the class count")
    p.add_argument("--python-layer", action="append", help="a Python layer file to copy in")
    p.add_argument("--pretrained", action="append", help=".caffemodel to load before training")
    p.add_argument("--gpu-count", type=int, help="train on the next N free GPUs (0: the CPU; default 1 "
                   "where the worker has GPUs); several: one process per GPU, engine backend only")
    p.add_argument("--use-gpus", help="train on these GPUs, e.g. 0,1 (real pycaffe: one GPU)")
    p.add_argument("--share-gpus", action="store_true", help="may share its GPUs with jobs that allow it too")
    p.add_argument("--group")
    p.add_argument("--notes")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--train", action="store_true", help="train now, in the foreground")
    when.add_argument("--queue", action="store_true",
                      help="leave it Waiting for the worker that takes its backend (see --backend)")
    p.set_defaults(func=cmd_model_create)
    for name, func in (("train", cmd_model_train), ("abort", cmd_model_abort), ("show", cmd_show),
                       ("delete", cmd_delete)):
        p = md.add_parser(name, parents=[common])
        p.add_argument("job_id")
        if name == "train":
            p.add_argument("--queue", action="store_true",
                           help="leave it Waiting for the worker that takes its backend instead of training here")
        p.set_defaults(func=func)
    p = md.add_parser("resume", parents=[common])
    p.add_argument("job_id")
    p.add_argument("--queue", action="store_true", help="leave it to the worker instead of waiting")
    p.set_defaults(func=cmd_model_resume)
    p = md.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_jobs, kind="model")
    p = md.add_parser("metrics", parents=[common])
    p.add_argument("job_id")
    p.add_argument("--since", type=int, default=0)
    p.set_defaults(func=cmd_model_metrics)
    for name, func in (("evaluate", cmd_model_evaluate), ("export", cmd_model_export)):
        p = md.add_parser(name, parents=[common])
        p.add_argument("job_id")
        p.add_argument("--snapshot", type=int, help="iteration (default: the last)")
        if name == "export":
            p.add_argument("--out")
            p.add_argument("--format", choices=("tar.gz", "zip"), default="tar.gz")
        p.set_defaults(func=func)
    p = md.add_parser("make-pretrained", parents=[common],
                      help="the snapshot becomes a pretrained model (DIGITS' Make Pretrained Model)")
    p.add_argument("job_id")
    p.add_argument("--snapshot", type=int, help="iteration (default: the last)")
    p.add_argument("--name", help="default: the job's name")
    p.set_defaults(func=cmd_model_make_pretrained)
    p = md.add_parser("test-many", parents=[common], help="infer many images at once (DIGITS' Test Many / Test a DB)")
    p.add_argument("job_id")
    p.add_argument("--snapshot", type=int)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="every image of a folder")
    src.add_argument("--list", help="a text file of image paths, one per line")
    src.add_argument("--zip", help="a zip of images")
    src.add_argument("--dataset-stage", choices=("train", "val"), help="every record of the model's dataset stage")
    p.add_argument("--probabilities", action="store_true", help="also write float16 probabilities (.npy)")
    p.add_argument("--resize", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="squash images to this size first")
    p.set_defaults(func=cmd_test_many)

    p = md.add_parser("clinical-export", parents=[common],
                      help="an evaluation's predicted contours (Sunnybrook text zip) or DICOM SEG")
    p.add_argument("job_id")
    p.add_argument("--format", choices=("contours", "dicom-seg"), default="contours")
    p.add_argument("--case", help="one patient, e.g. SC-HF-I-1 (default: all evaluated)")
    p.add_argument("--record", help="one validation record key")
    p.add_argument("--snapshot", type=int, help="the evaluation of that iteration (default: the last)")
    p.add_argument("--out", help="file or folder (default: the export's own name, here)")
    p.set_defaults(func=cmd_model_clinical_export)

    p = sub.add_parser("infer", parents=[common], help="run a trained model on a record or an image")
    p.add_argument("job_id")
    p.add_argument("--snapshot", type=int)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--record", help="validation record: its key (00000021) or the name the pages show "
                                      "('SC-HF-I-1 / 0021')")
    src.add_argument("--image", help="PNG/TIFF/DICOM file or a folder")
    p.add_argument("--out", help="write class maps, probabilities and Sunnybrook contour files here")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("info", parents=[common], help="versions, backends (the real Caffe found) and plugins")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("worker", parents=[common], help="run queued jobs (survives web restarts)")
    p.add_argument("--slots", type=int, default=1, help="trainings at once on CPU")
    p.add_argument("--gpus", default="", help="GPU ids this worker hands out, e.g. 0,1, or auto (NVML's list)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("serve", parents=[common], help="the web interface")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--trusted-hosts", metavar="NAMES",
                   help="comma-separated host names the server answers to (default: localhost, "
                        "127.0.0.1, [::1] and --host; '*' = any; env CAFFESEG_TRUSTED_HOSTS)")
    p.add_argument("--dev", action="store_true",
                   help="developer mode: Werkzeug's server with its debugger (runs code typed in "
                        "the browser; loopback only) instead of waitress")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("surgery", parents=[common], help="classifier weights → FCN weights; conv1 RGB ↔ gray",
                       description="alexnet-fcn / vgg16-fcn8s: ImageNet classifier → FCN starting weights; "
                                   "rgb-to-gray: conv1 summed over RGB (RGB weights, gray dataset); "
                                   "gray-to-rgb: conv1 spread over RGB as W/3 (gray weights, RGB dataset)")
    p.add_argument("kind", choices=("alexnet-fcn", "vgg16-fcn8s", "rgb-to-gray", "gray-to-rgb"))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--gray", action="store_true")
    p.set_defaults(func=cmd_surgery)
    p = sub.add_parser("pretrained", parents=[common], help="list, fetch or prepare known pretrained models")
    p.add_argument("name", nargs="?")
    p.add_argument("--dest")
    p.add_argument("--url", help="download from this address instead of the published one (a mirror)")
    p.add_argument("--prepare", action="store_true",
                   help="also convert it into the weights its prototxt/ network starts from")
    p.add_argument("--gray", action="store_true", help="with --prepare: conv1 summed over RGB (1-channel data)")
    p.add_argument("--classes", type=int, default=2, help="with --prepare: classes of the converted score layers")
    p.add_argument("--import", dest="import_archive", metavar="ARCHIVE",
                   help="store a caffeseg or DIGITS model download (tar/tar.gz/zip with info.json) as a "
                        "pretrained model (NAME, if given, names it)")
    p.add_argument("--layers", metavar="ID", help="an uploaded pretrained model's layers and parameter shapes")
    p.set_defaults(func=cmd_pretrained)
    p = sub.add_parser("lab", parents=[common], help="the whole DIGITS lab on the sample phantom",
                       description="Run the DIGITS medical-imaging lab end to end on the Sunnybrook-layout "
                                   "phantom: build the dataset, train each lab network, evaluate it on the "
                                   "validation set and print one table (val loss, accuracy, Dice). Slow on a "
                                   "CPU: use --cases and --only for a short run.")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per network (default: %(default)s)")
    p.add_argument("--base-lr", default="0.0001",
                   help="base learning rate of every network (default: %(default)s, the lab's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per iteration (default: the network's)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the train/val split and of the solvers (default: %(default)s)")
    p.add_argument("--cases", type=int, default=None, help="phantom cases to generate (default: all 15)")
    p.add_argument("--only", action="append", help="run only these networks (file names, e.g. lab_cnn)")
    p.set_defaults(func=cmd_lab)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.backend_given = hasattr(args, "backend")
    for name, default in (("data", None), ("json", False), ("backend", "auto")):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        code = args.func(args)
    except CliError as exc:
        print("caffeseg: error: %s" % exc, file=sys.stderr)
        return exc.code
    except KeyError as exc:
        print("caffeseg: error: %s" % (exc.args[0] if exc.args else exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, OSError, PretrainedError) as exc:  # our errors: one line, no traceback
        print("caffeseg: error: %s" % exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    return code or EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

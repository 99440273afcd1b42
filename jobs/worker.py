"""A job worker without the web app: ``python3 -m caffeseg.jobs.worker --backend pycaffe --data /data``.

Runs the queued model jobs for its backend (``--backend pycaffe``: jobs recorded ``pycaffe`` or
``auto``; see ``Scheduler.takes``) from the shared jobs folder and database. Standard library plus
the runner only, so it runs in the real-pycaffe image (Python 3.9, numpy, python3-caffe). It only
trains: queued datasets are built by the app's worker (``caffeseg serve`` with START_WORKER, or
``caffeseg worker``).
"""
import argparse
import os
import sys

from caffeseg.jobs import store as st
from caffeseg.jobs.scheduler import Scheduler


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m caffeseg.jobs.worker", description=__doc__)
    parser.add_argument("--data", default=os.environ.get("CAFFESEG_DATA", "data"),
                        help="data root holding the jobs folder and database")
    parser.add_argument("--backend", choices=["engine", "pycaffe", "auto"],
                        default=os.environ.get("CAFFESEG_BACKEND", "auto"))
    parser.add_argument("--cpu-slots", type=int, default=1)
    args = parser.parse_args(argv)
    root = os.path.join(os.path.abspath(args.data), "jobs")
    os.makedirs(root, exist_ok=True)
    scheduler = Scheduler(st.JobStore(root), backend=args.backend, cpu_slots=args.cpu_slots)
    print("caffeseg worker (%s) on %s: trains model jobs for this backend; datasets are built by the"
          " app's worker" % (args.backend, root), file=sys.stderr)
    try:
        scheduler.loop()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

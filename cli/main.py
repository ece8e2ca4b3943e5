"""``python -m cli``: restore one photo or whole folders through the gateway (simple or advanced mode).

Each photo becomes one job on the gateway (POST /v1/jobs, polled until it ends, result fetched). Results are
written as PNG into the output folder (same relative layout as the input folder). A photo whose result
already exists is skipped, so an interrupted or partly failed run can simply be repeated. Inputs are never
written to. Exit status: 0 when every photo was restored or skipped, 1 when any failed, 2 for usage errors,
130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FINAL_STATES = ("done", "failed", "cancelled")
DEFAULT_GATEWAY = "http://127.0.0.1:8000"


class JobFailed(Exception):
    pass


@dataclass
class Item:
    source: Path
    target: Path


@dataclass
class Report:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped_stages: Counter = field(default_factory=Counter)
    skip_reasons: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- files

def collect(inputs: list[Path], output: Path, recursive: bool) -> list[Item]:
    """Input photos and their output paths; raises ValueError for anything unsafe or missing."""
    output = output.resolve()
    pairs: list[tuple[Path, Path]] = []   # (source, relative target without suffix decision)
    for given in inputs:
        path = given.resolve()
        if path.is_file():
            pairs.append((path, Path(path.name)))
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            for source in sorted(path.glob(pattern)):
                if not source.is_file() or source.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if output != path and output in source.parents:   # never re-read our own results
                    continue
                pairs.append((source, source.relative_to(path)))
        else:
            raise ValueError(f"no such file or folder: {given}")
    # <stem>.png, unless two inputs would share it (a.jpg and a.png): then <name>.png for each of them
    wanted = Counter(rel.with_suffix(".png") for _, rel in pairs)
    items = []
    sources = {source for source, _ in pairs}
    seen_targets = set()
    for source, rel in pairs:
        target_rel = rel.with_suffix(".png") if wanted[rel.with_suffix(".png")] == 1 else rel.with_name(rel.name + ".png")
        target = output / target_rel
        if target in sources or target.resolve() in sources:
            raise ValueError(f"the output {target} would overwrite the input {target}; choose another --output")
        if target in seen_targets:  # the same file given twice
            continue
        seen_targets.add(target)
        items.append(Item(source, target))
    return items


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- gateway

def error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        where = f" at stage {error['stage']}" if error.get("stage") else ""
        return f"HTTP {response.status_code} {error.get('code')}{where}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


class Runner:
    def __init__(self, http: httpx.Client, fields: dict[str, str], *, poll: float, job_timeout: float,
                 max_queue_retries: int = 60):
        self.http, self.fields, self.poll, self.job_timeout = http, fields, poll, job_timeout
        self.max_queue_retries = max_queue_retries
        self.current_job: str | None = None

    def submit(self, source: Path) -> str:
        data = source.read_bytes()
        for _ in range(self.max_queue_retries):
            response = self.http.post("/v1/jobs", files={"image": (source.name, data, "application/octet-stream")},
                                      data=self.fields)
            if response.status_code == 429:   # the gateway's queue is full: wait as told
                time.sleep(float(response.headers.get("retry-after", 5)))
                continue
            if response.status_code != 202:
                raise JobFailed(error_text(response))
            return response.json()["id"]
        raise JobFailed("the gateway's job queue stayed full")

    def run(self, source: Path, on_stage) -> tuple[bytes, dict]:
        job_id = self.current_job = self.submit(source)
        deadline = time.monotonic() + self.job_timeout
        try:
            while True:
                response = self.http.get(f"/v1/jobs/{job_id}")
                if response.status_code != 200:
                    raise JobFailed(error_text(response))
                status = response.json()
                on_stage(status)
                if status["state"] in FINAL_STATES:
                    break
                if time.monotonic() > deadline:
                    self.cancel()
                    raise JobFailed(f"no result within {self.job_timeout:.0f} s (job cancelled)")
                time.sleep(self.poll)
            if status["state"] != "done":
                error = status.get("error") or {}
                where = f" at stage {error['stage']}" if error.get("stage") else ""
                raise JobFailed(f"job {status['state']}{where}: {error.get('code', '')} {error.get('message', '')}".strip())
            response = self.http.get(f"/v1/jobs/{job_id}/result")
            if response.status_code != 200:
                raise JobFailed(error_text(response))
            return response.content, status
        finally:
            self.current_job = None

    def cancel(self) -> None:
        if self.current_job:
            try:
                self.http.delete(f"/v1/jobs/{self.current_job}")
            except httpx.HTTPError:
                pass


# ---------------------------------------------------------------------------------------------- command

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cli", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="photos (JPEG/PNG) and/or folders of photos")
    parser.add_argument("-o", "--output", type=Path, default=Path("restored"),
                        help="output folder (default: ./restored)")
    parser.add_argument("--mode", choices=("simple", "advanced"), default=None,
                        help="simple (default) or advanced (needs --stages)")
    parser.add_argument("--colorize", choices=("auto", "on", "off"), default="auto", help="simple mode")
    parser.add_argument("--repair", choices=("auto", "on", "off"), default="auto",
                        help="simple mode: scratch and dust repair (auto: only clear damage)")
    parser.add_argument("--upscale", default="none", help="simple mode: none, x2, x4, enhance or a factor (1.5)")
    parser.add_argument("--tone", choices=("auto", "off"), default="auto",
                        help="simple mode: auto corrects faded prints (levels, colour cast), off never")
    parser.add_argument("--stages", help="advanced mode: JSON list of {\"stage\": ..., \"params\": {...}}, "
                                         "or @file.json")
    parser.add_argument("-r", "--recursive", action="store_true", help="include sub-folders")
    parser.add_argument("--force", action="store_true", help="redo photos whose result already exists")
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_URL", DEFAULT_GATEWAY),
                        help="gateway URL (default: $GATEWAY_URL or %(default)s)")
    parser.add_argument("--poll", type=float, default=0.3, help="seconds between status polls")
    parser.add_argument("--job-timeout", type=float, default=3600, help="seconds to wait for one photo")
    args = parser.parse_args(argv)
    args.mode = args.mode or ("advanced" if args.stages else "simple")
    if args.mode == "advanced":
        if not args.stages:
            parser.error("--mode advanced needs --stages")
        raw = Path(args.stages[1:]).read_text() if args.stages.startswith("@") else args.stages
        try:
            chain = json.loads(raw)
        except json.JSONDecodeError as exc:
            parser.error(f"--stages is not valid JSON: {exc}")
        if not isinstance(chain, list):
            parser.error("--stages must be a JSON list")
        args.fields = {"mode": "advanced", "stages": json.dumps(chain)}
    else:
        args.fields = {"mode": "simple", "colorize": args.colorize, "upscale": args.upscale, "repair": args.repair,
                       "tone": args.tone}
    return args


def print_summary(report: Report, elapsed: float, output: Path, out=sys.stdout) -> None:
    print(f"\nSummary: {len(report.done)} restored, {len(report.skipped)} skipped (already done), "
          f"{len(report.failed)} failed, in {elapsed:.1f} s", file=out)
    for stage, count in report.skipped_stages.items():
        print(f"  note: stage '{stage}' was skipped for {count} photo(s): {report.skip_reasons[stage]}", file=out)
    if report.failed:
        print("Failed:", file=out)
        for path, reason in report.failed:
            print(f"  {path}: {reason}", file=out)
    print(f"Output folder: {output}", file=out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        items = collect(args.inputs, args.output, args.recursive)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not items:
        print("error: no JPEG or PNG photos found", file=sys.stderr)
        return 2
    report = Report()
    todo = []
    for item in items:
        if not args.force and item.target.is_file() and item.target.stat().st_size > 0:
            report.skipped.append(item.source)
        else:
            todo.append(item)
    http = httpx.Client(base_url=args.gateway.rstrip("/"), timeout=httpx.Timeout(120, connect=5))
    if todo:
        try:
            http.get("/health").raise_for_status()
        except httpx.HTTPError as exc:
            print(f"error: the gateway at {args.gateway} is not reachable ({type(exc).__name__})", file=sys.stderr)
            return 2
    runner = Runner(http, args.fields, poll=args.poll, job_timeout=args.job_timeout)
    bar = tqdm(total=len(items), initial=len(report.skipped), unit="photo", dynamic_ncols=True, file=sys.stderr)
    try:
        for item in todo:
            name = item.source.name
            bar.set_description_str(name[:30])

            def on_stage(status: dict, name=name) -> None:
                done = len(status.get("stages_done", [])) + len(status.get("skipped", []))
                stage = status.get("stage") or status["state"]
                bar.set_postfix_str(f"{stage} ({done}/{len(status.get('stages', []))} stages)")

            try:
                image, status = runner.run(item.source, on_stage)
                write_atomically(item.target, image)
                report.done.append(item.source)
                for skipped in status.get("skipped", []):
                    report.skipped_stages[skipped["stage"]] += 1
                    report.skip_reasons.setdefault(skipped["stage"], skipped["reason"])
            except JobFailed as exc:
                report.failed.append((item.source, str(exc)))
            except (httpx.HTTPError, OSError) as exc:
                report.failed.append((item.source, f"{type(exc).__name__}: {exc}"))
            bar.update(1)
    except KeyboardInterrupt:
        runner.cancel()
        bar.close()
        print_summary(report, time.perf_counter() - started, args.output.resolve())
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        http.close()
    bar.close()
    print_summary(report, time.perf_counter() - started, args.output.resolve())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

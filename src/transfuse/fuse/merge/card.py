"""The model card (README.md) of a merge: method, paper, inputs with sha256 hashes, parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

import transfuse

if TYPE_CHECKING:
    from transfuse.fuse.merge.config import MergeConfig
    from transfuse.fuse.merge.engine import MergeResult
    from transfuse.fuse.merge.method import MergeMethod


def render_card(cfg: MergeConfig, method: MergeMethod, inputs: list[tuple[str, str, dict[str, str]]],
                result: MergeResult) -> str:
    """Markdown with YAML front matter; ``inputs`` are (role, reference, {file: sha256})."""
    front = {"library_name": "transformers", "tags": ["merge", "transfuse", method.name]}
    if cfg.base_model:
        front["base_model"] = [cfg.base_model]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# Merged model ({method.pretty_name})", "",
             f"Made with transfuse {transfuse.__version__} by the **{method.pretty_name}** merge "
             f"method ([paper]({method.paper})).", "", "## Inputs", ""]
    for role, ref, hashes in inputs:
        lines.append(f"- {role}: `{ref}`")
        for name, digest in hashes.items():
            lines.append(f"  - `{name}` sha256 `{digest}`")
    lines += ["", "## Parameters", "", "```yaml", cfg.to_yaml().strip(), "```", ""]
    lines += ["## Output", "",
              f"{result.tensors} tensors ({result.merged} merged, {result.copied} copied "
              f"unchanged) in {len(result.shards)} shard(s), computed in float32 on {result.device}."]
    if result.heads:
        lines += ["", "Per-task heads (kept per model, not merged) are stored as "
                  "`heads.<model>.<tensor>`; see `heads.json`:", ""]
        lines += [f"- {m}: {', '.join(ps)}" for m, ps in result.heads.items()]
    notes = [*method.notes, *result.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"

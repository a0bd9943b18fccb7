"""Write the config sections one stage reads (passed as a rule parameter) to a YAML file."""

import json
import os

import yaml

settings = json.loads(snakemake.params.settings)  # noqa: F821 (provided by Snakemake)
out = snakemake.output[0]  # noqa: F821
tmp = out + ".tmp"
with open(tmp, "w") as f:
    yaml.safe_dump(settings, f, sort_keys=False)
os.replace(tmp, out)
with open(snakemake.log[0], "w") as f:  # noqa: F821
    f.write(f"wrote {out}\n")

# The needle task's dialogue (sparse_video_r1.synthetic.needle.DIALOGUE) in the three forms the needle scripts pass on;
# sourced by scripts/gpu/needle_grpo.sh, scripts/needle_learnability.sh and scripts/needle_heldout_cpu.sh.
#   DIALOGUE            JSON, for `needle --dialogue` and `sft --dialogue`
#   DIALOGUE_OVERRIDES  hydra overrides for the GRPO runs (++: also fields the YAML does not list)
#   EVAL_DIALOGUE       flags of `python -m sparse_video_r1.tools.evaluate`
PY=${PYTHON:-python3}
mapfile -t _needle_dialogue < <("$PY" -c 'import dataclasses, json
from sparse_video_r1.synthetic.needle import DIALOGUE
fields = dataclasses.asdict(DIALOGUE)
print(json.dumps(fields))
keys = ("initial_frames", "max_frames_per_request", "max_total_frames", "max_turns", "max_pixels", "max_tokens_per_turn")
print(" ".join(f"--{key.replace(chr(95), chr(45))} {fields[key]}" for key in keys))
for key, value in fields.items():
    print(f"++sparse_video.{key}={value}")')
DIALOGUE=${_needle_dialogue[0]}
read -r -a EVAL_DIALOGUE <<< "${_needle_dialogue[1]}"
DIALOGUE_OVERRIDES=("${_needle_dialogue[@]:2}")
unset _needle_dialogue

# The needle task's dialogue (sparse_video_r1.synthetic.needle.DIALOGUE) in the three forms the needle scripts pass on;
# sourced by scripts/gpu/needle_grpo.sh, scripts/needle_learnability.sh and scripts/needle_heldout_cpu.sh.
#   DIALOGUE            JSON by section, for `needle --dialogue` and `sft --dialogue`
#   DIALOGUE_OVERRIDES  hydra overrides for the GRPO runs (++: also fields the YAML does not list)
#   EVAL_DIALOGUE       flags of `python -m sparse_video_r1.tools.evaluate` (its dialogue and decoding flags)
PY=${PYTHON:-python3}
mapfile -t _needle_dialogue < <("$PY" -c 'import dataclasses, json
from sparse_video_r1.env.config import config_flags
from sparse_video_r1.synthetic.needle import DIALOGUE
print(json.dumps(dataclasses.asdict(DIALOGUE)))
print(" ".join(config_flags(DIALOGUE.dialogue) + config_flags(DIALOGUE.decoding)))
for override in DIALOGUE.hydra_overrides():
    print(f"++{override}")')
DIALOGUE=${_needle_dialogue[0]}
read -r -a EVAL_DIALOGUE <<< "${_needle_dialogue[1]}"
DIALOGUE_OVERRIDES=("${_needle_dialogue[@]:2}")
unset _needle_dialogue

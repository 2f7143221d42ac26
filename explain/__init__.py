"""Explain dictionary features and score the explanations; compare bases by their scores.

Layout by concern (so that new scorers, backends and descriptors each add a
module, not a branch in the pipeline):

* `settings` – the options of `explain` and `compare` (light: no numpy/torch)
* `pipeline` (validate / plan / build / persist / run), `feature` (one
  feature's record), `components`, `run_folder`, `records_file`
* `exemplars`, `records`, `prompts`, `explainer`, `token_list` – what the
  explainer sees and says; `sampling` – the test examples of the detection,
  fuzzing, embedding and intruder scorers (Paulo et al.)
* `llm/` – backends, the LLM request cache, digit read-outs, greedy answers
  with log-probabilities, the sentence embedder
* `scorers/` – one `Scorer` interface, one module per way of scoring, and
  one `ScorerSpec` row each (`scorers/spec.py`) that every command reads
* `compare` – mean score per basis per layer with CIs; `scorer_compare` –
  every scorer side by side and their agreement
"""

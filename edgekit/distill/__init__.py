"""Knowledge distillation: losses, students, data and the training loop behind the `distill` pass.

Split into one job per module so each is testable alone: `losses` (output, hidden-state and
attention losses), `students` (layer-dropped teacher copies and model-agnostic CNN/BiLSTM encoders),
`capture` (reading hidden states, q/k/v off a running HF encoder), `data` (corpus, held-out split,
augmentation, batching) and `trainer` (the loop with checkpoints and resume).
"""

"""What every layer shares. Without torch (a device without torch imports these): ``errors``, ``exitcodes``,
``job_parser`` (every job's ``--help``), ``record`` (what a run measured), ``timing`` (where a rank's time goes),
``verification`` (the bounds a split must keep), ``checksum`` (the exchange's CRC-32), ``costmodel`` (the cost
model's formulas), ``processes`` (/proc and dying with one's parent), ``normalization``, ``logger`` and
``tensorboard`` (TensorBoard without torch). With torch: ``checkpoint`` (run state written and read atomically)
and ``meters`` (top-k counts, agreement, progress lines)."""

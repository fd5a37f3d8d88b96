"""Input preparation: the volumes of a case brought onto one grid (geometry, rigid registration, skull stripping)
and checked (plausibility); `inputs.assemble_case` makes the Case."""

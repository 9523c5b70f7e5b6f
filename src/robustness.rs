//! Bad input, and what it gets.
//!
//! Nothing a caller passes in makes natgrad panic: each case below returns a
//! typed [`Error`](crate::Error) (or, from the kernels, a
//! [`natgrad_kernels::Error`], which natgrad wraps as
//! [`Error::Kernel`](crate::Error::Kernel)) with a message naming the offending
//! argument. A refused training step leaves the network's weights and the
//! optimizer's state bit for bit as they were, so training can continue as if
//! the call had not been made (exception: see the last training row). Every row
//! is exercised by a test in `tests/bad_input.rs` (named in the last column),
//! and the checkpoint rows also by `tests/checkpoint.rs`.
//!
//! # Training steps ([`Optimizer::step`](crate::optim::Optimizer::step), every optimizer)
//!
//! | Bad input | Error | Test |
//! |---|---|---|
//! | `x` with a number of rows other than `n_0` | `Shape` | `input_with_the_wrong_number_of_rows` |
//! | `y` with a number of rows other than `n_L`, or other columns than `x` | `Shape` | `targets_with_the_wrong_shape` |
//! | minibatch larger than the workspace's `max_batch` | `Shape` | `minibatch_larger_than_the_workspace_or_the_optimizer` |
//! | minibatch larger than the natural gradient's `max_batch` | `Shape` | same |
//! | empty minibatch (0 columns) | `Shape` | `empty_minibatch` |
//! | NaN or ±infinity anywhere in `x` or `y` | `NonFinite` (names row and column) | `non_finite_inputs_and_targets` |
//! | weights made NaN by the caller (`params_mut`) | `NonFinite` | `weights_made_nan_by_the_caller` |
//! | weights made ±infinite by the caller | `NonFinite` | `weights_made_infinite_by_the_caller` |
//! | workspace or optimizer built for other widths | `Shape` | `workspace_or_optimizer_built_for_another_network` |
//! | curvature factor that cannot be factorised even at the largest damping (natural gradient) | `NotPositiveDefinite` (weights kept, but not the optimizer's state: the factors and their Cholesky factors are overwritten, the sampler's RNG has advanced, the damping is left at the last value tried and the factors are marked stale) | `curvature_factor_that_will_not_factorise` |
//!
//! # Construction and configuration
//!
//! | Bad input | Error | Test |
//! |---|---|---|
//! | `Mlp::from_layers` with a NaN/±inf parameter | `NonFinite` | `a_network_built_from_invalid_layers` |
//! | `Mlp::from_layers` with a wrong parameter count, disagreeing widths, a zero width, no layer, or a non-identity output under Bernoulli/Categorical | `Shape` | same |
//! | `Mlp::new` with fewer than two widths, a zero width, a wrong number of activations, a non-identity output under Bernoulli/Categorical, an init gain that is negative or not finite; unknown preset | `InvalidConfig` | `invalid_network_definitions` |
//! | learning rate `<= 0`, NaN or infinite (SGD, Adam, natural gradient) | `InvalidConfig` | `learning_rates_not_finite_or_not_positive` |
//! | momentum, `beta1`, `beta2` outside `[0, 1)`; weight decay negative or not finite (also the natural gradient's); Adam `epsilon <= 0` | `InvalidConfig` | `other_first_order_settings_out_of_their_domain` |
//! | damping `<= 0`, NaN, infinite or outside `damping_bounds`; bounds not positive, not finite or inverted | `InvalidConfig` | `damping_not_positive_or_not_finite_or_out_of_its_bounds` |
//! | `factor_decay` outside `[0, 1)` or NaN | `InvalidConfig` | `factor_decay_outside_zero_one` |
//! | `damping_check_fraction` outside `(0, 1]` or NaN | `InvalidConfig` | `damping_check_fraction_outside_zero_one` |
//! | `weight_decay > 0` with `Preconditioning::LowRank` or `Gram` (the penalty's gradient is not of the minibatch's low rank) | `InvalidConfig` | `weight_decay_with_the_low_rank_or_gram_form` |
//! | `inverse: Explicit` with `factor_update: RankUpdate` | `InvalidConfig` | `explicit_inverses_with_rank_updates` |
//! | `refresh_interval == 0`, `statistics_interval == 0`, `samples == 0`, Levenberg-Marquardt `interval == 0`, `max_batch == 0` (optimizer or workspace) | `InvalidConfig` | `zero_counts_in_the_natural_gradient_configuration` |
//! | `Preconditioning::Gram` without per-minibatch factors (`factor_decay` not 0, `refresh_interval` or `statistics_interval` not 1, `samples` not 1, or rank updates) | `InvalidConfig` | `gram_preconditioning_without_per_minibatch_factors` |
//! | `load_state` with another optimizer's state, other buffer lengths or scalar count | `Shape` (state kept) | `optimizer_state_of_another_optimizer_or_shape` |
//! | `load_state` with a natural-gradient damping outside its bounds | `InvalidConfig` (state kept) | same |
//!
//! # Kernels (`natgrad_kernels`)
//!
//! | Bad input | Error | Test |
//! |---|---|---|
//! | `gemm`: inner dimensions differ, `C` of the wrong shape, bias of the wrong length, epilogue `output` of the wrong shape | `ShapeMismatch` | `kernels_given_mismatched_shapes` |
//! | `syrk_lower`: `X` rows differ from `C`'s order, `C` not square | `ShapeMismatch` | same |
//! | `cholesky_in_place`: `A` not square | `ShapeMismatch` | same |
//! | solves: right-hand sides of the wrong length | `ShapeMismatch` | same |
//! | `cholesky_rank_update`: `alpha` length differs from `W`'s columns, `W` of the wrong height | `ShapeMismatch` (`L` untouched) | same |
//! | `syrk_lower` `alpha`/`beta`, `cholesky_in_place` `shift`, `cholesky_rank_update` `alpha` not finite | `InvalidArgument` | `kernels_given_non_finite_scalars` |
//! | a matrix that is not positive definite (also in the blocked path, `n > 32`) | `NotPositiveDefinite { pivot, value }`: the first failing pivot (0-based) and its value before the square root | `matrices_that_are_not_positive_definite` |
//! | NaN or infinity in the matrix given to `cholesky_in_place` | `NotPositiveDefinite` at the pivot of its row, `value` NaN | same |
//! | a downdate that makes the factor indefinite | `NotPositiveDefinite` | same |
//!
//! The kernels are also fuzzed (`fuzz/`, targets `gemm`, `syrk`,
//! `cholesky_solve`, `chol_update`) with shapes, strides, transposes, scalars
//! and values decoded from the fuzzer's input, including wrong shapes,
//! non-finite scalars and NaN/infinite entries.
//!
//! # Checkpoints ([`checkpoint`](crate::checkpoint))
//!
//! | Bad input | Error | Test |
//! |---|---|---|
//! | file missing or unreadable | `Io { path }` | `checkpoint_files_that_are_not_valid` |
//! | empty, truncated at any length, or extended | `Format { path, detail }` | same; `every_truncation_and_extension_is_detected` |
//! | any single byte changed | `Format` (checksum mismatch) | same; `every_single_byte_corruption_is_detected` |
//! | another file format, another format version | `Format` (names magic or version) | same; `absurd_lengths_with_a_valid_checksum_are_refused_without_allocating` |
//! | lengths larger than the file (even with a valid checksum) | `Format`, before any allocation | `absurd_lengths_with_a_valid_checksum_are_refused_without_allocating` |
//! | `save` of a network with NaN/inf parameters | `NonFinite`, nothing written | `checkpoint_files_that_are_not_valid` |
//! | `save` into a directory that cannot take the file | `Io`, the previous checkpoint intact | `failed_saves_leave_the_previous_checkpoint_loadable` |

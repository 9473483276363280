//! Running one call: the host path (check, upload), the device path (check the
//! user's buffers), and `execute`, which makes the work buffers, encodes every
//! dispatch of the plan in one compute pass, submits and reads back.

use super::*;

impl FcosLoss {
    pub(super) fn host_call(
        &self,
        levels: &Levels,
        inputs: &Inputs,
        variant: FusedVariant,
        weights: &LossWeights,
    ) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
        let start = Instant::now();
        self.backward_available(variant)?;
        weights.check()?;
        inputs.check_shapes(levels, self.config.num_classes as usize)?;
        let b = inputs.batch;
        let backward = variant.writes_gradients();
        if levels.positions() == 0 {
            let grads = backward.then(|| self.empty_grads(levels, b));
            return Ok(Timed {
                value: (self.zero_losses(b), grads),
                kernel: None,
                call: start.elapsed(),
            });
        }
        self.check_buffer_sizes(levels, b, backward)?;
        let plan = self.plan(levels, b)?;
        let mut guard = self.lock_pool()?;
        let pool = &mut *guard;
        let device = &self.ctx.device;
        pool.grow(device, |pool| {
            let usage = wgpu::BufferUsages::STORAGE
                | if self.ctx.zero_copy_upload() {
                    wgpu::BufferUsages::MAP_WRITE
                } else {
                    wgpu::BufferUsages::COPY_DST
                };
            for (i, name) in INPUT_NAMES.iter().enumerate() {
                let bytes = self.input_bytes(levels, b, i);
                Pool::ensure(
                    &mut pool.inputs[i],
                    &mut pool.created,
                    device,
                    name,
                    bytes,
                    usage,
                );
            }
            if backward {
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
                let mut total = 0;
                for (i, name) in ["grad cls_logits", "grad cnt_logits", "grad reg_preds"]
                    .iter()
                    .enumerate()
                {
                    let bytes = self.input_bytes(levels, b, i);
                    total += bytes;
                    Pool::ensure(
                        &mut pool.grads[i],
                        &mut pool.created,
                        device,
                        name,
                        bytes,
                        usage,
                    );
                }
                Pool::ensure(
                    &mut pool.grad_readback,
                    &mut pool.created,
                    device,
                    "grad readback",
                    total,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                );
            }
        })?;
        self.upload(pool, levels, inputs)?;
        let grad_source = backward.then_some(Source::Pool);
        // The values are checked inside the fused pass, as on the device path (cheaper
        // than a separate pass over the host slices); only when it flags one does the
        // host validator look for the first bad element, in the caller's slices.
        let (losses, kernel, flags) = self.execute(
            pool,
            levels,
            &plan,
            Source::Pool,
            grad_source,
            variant,
            self.checks,
            weights,
        )?;
        if flags != 0 {
            return Err(self.name_bad_input(levels, inputs, flags));
        }
        let grads = if backward {
            Some(self.read_grads(pool, levels, b)?)
        } else {
            None
        };
        Ok(Timed {
            value: (losses, grads),
            kernel,
            call: start.elapsed(),
        })
    }

    pub(super) fn device_call(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: Option<&DeviceGradients>,
        variant: FusedVariant,
        weights: &LossWeights,
    ) -> Result<Timed<Losses>, FcosError> {
        let start = Instant::now();
        self.backward_available(variant)?;
        weights.check()?;
        let b = inputs.batch;
        if b == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        crate::inputs::check_extent(levels, b, self.config.num_classes as usize)?;
        let mut named: Vec<(String, &wgpu::Buffer, u64)> = inputs
            .buffers()
            .iter()
            .enumerate()
            .map(|(i, buf)| {
                (
                    format!("{} buffer", INPUT_NAMES[i]),
                    *buf,
                    self.input_bytes(levels, b, i),
                )
            })
            .collect();
        if let Some(g) = grads {
            for (i, buf) in [g.cls_logits, g.cnt_logits, g.reg_preds]
                .into_iter()
                .enumerate()
            {
                named.push((
                    format!("grad {} buffer", INPUT_NAMES[i]),
                    buf,
                    self.input_bytes(levels, b, i),
                ));
            }
        }
        for (name, buf, need) in &named {
            if buf.size() < *need {
                return Err(FcosError::shape(
                    name.clone(),
                    format!("at least {need} bytes ({} f32)", need / 4),
                    format!("{} bytes", buf.size()),
                ));
            }
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(FcosError::Gpu(format!(
                    "{name} lacks BufferUsages::STORAGE (its usage is {:?})",
                    buf.usage()
                )));
            }
        }
        if variant.writes_gradients() && grads.is_none() {
            return Err(FcosError::Gpu(
                "the backward pass needs gradient buffers".into(),
            ));
        }
        if levels.positions() == 0 {
            return Ok(Timed {
                value: self.zero_losses(b),
                kernel: None,
                call: start.elapsed(),
            });
        }
        let plan = self.plan(levels, b)?;
        let mut guard = self.lock_pool()?;
        let grad_source = grads.map(|g| Source::User([g.cls_logits, g.cnt_logits, g.reg_preds]));
        let checked = self.checks;
        let (losses, kernel, flags) = self.execute(
            &mut guard,
            levels,
            &plan,
            Source::User(inputs.buffers()),
            grad_source,
            variant,
            checked,
            weights,
        )?;
        if flags != 0 {
            drop(guard);
            return Err(self.locate_bad_input(levels, inputs, flags));
        }
        Ok(Timed {
            value: losses,
            kernel,
            call: start.elapsed(),
        })
    }

    /// Makes the work buffers, encodes every dispatch of `plan` in one compute pass,
    /// submits, and reads back the per-image losses and the kernel time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn execute(
        &self,
        pool: &mut Pool,
        levels: &Levels,
        plan: &Plan,
        inputs: Source<'_, 6>,
        grads: Option<Source<'_, 3>>,
        variant: FusedVariant,
        checked: bool,
        weights: &LossWeights,
    ) -> Result<(Losses, Option<Duration>, u32), FcosError> {
        let device = &self.ctx.device;
        let b = plan.batch as u64;
        let backward = variant.writes_gradients();
        let stride = (std::mem::size_of::<Params>() as u64)
            .next_multiple_of(self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64);
        // Params slots: the global one, one per fused segment, one per count group.
        let count_slot0 = 1 + plan.segments.len();
        let slots = (count_slot0 + plan.count_groups.len()) as u64;
        let out_bytes = std::mem::size_of::<ImageLoss>() as u64 * b;
        pool.grow(device, |pool| {
            let created = &mut pool.created;
            let storage = wgpu::BufferUsages::STORAGE;
            // Sized by a bound that only grows with B, so a smaller batch never regrows it.
            let partial_bytes = PARTIAL_BYTES * plan.partials_capacity;
            Pool::ensure(
                &mut pool.partials,
                created,
                device,
                "fcos partials",
                partial_bytes,
                storage,
            );
            Pool::ensure(
                &mut pool.image_losses,
                created,
                device,
                "fcos image losses",
                out_bytes,
                storage | wgpu::BufferUsages::COPY_SRC,
            );
            Pool::ensure(
                &mut pool.readback,
                created,
                device,
                "fcos readback",
                out_bytes + 16,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            Pool::ensure(
                &mut pool.params,
                created,
                device,
                "fcos params",
                stride * slots,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            );
            if backward {
                Pool::ensure(
                    &mut pool.num_pos,
                    created,
                    device,
                    "fcos num_pos",
                    4 * b,
                    storage,
                );
            }
            if self.query_set.is_some() {
                Pool::ensure(
                    &mut pool.timestamps,
                    created,
                    device,
                    "fcos timestamps",
                    16,
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                );
            }
        })?;
        let pool = &*pool;
        let partials = pool.partials.as_ref().ok_or_else(missing)?;
        let image_losses = pool.image_losses.as_ref().ok_or_else(missing)?;
        let readback = pool.readback.as_ref().ok_or_else(missing)?;
        let params_buf = pool.params.as_ref().ok_or_else(missing)?;
        let input_bufs: [&wgpu::Buffer; 6] = match inputs {
            Source::User(bufs) => bufs,
            Source::Pool => {
                let mut out = Vec::with_capacity(6);
                for slot in &pool.inputs {
                    out.push(slot.as_ref().ok_or_else(missing)?);
                }
                out.try_into().map_err(|_| missing())?
            }
        };
        let grad_bufs: Option<[&wgpu::Buffer; 3]> = match grads {
            None => None,
            Some(Source::User(bufs)) => Some(bufs),
            Some(Source::Pool) => {
                let mut out = Vec::with_capacity(3);
                for slot in &pool.grads {
                    out.push(slot.as_ref().ok_or_else(missing)?);
                }
                Some(out.try_into().map_err(|_| missing())?)
            }
        };
        let num_pos = if backward {
            Some(pool.num_pos.as_ref().ok_or_else(missing)?)
        } else {
            None
        };
        let p = &self.pipelines;
        let kernel: &Kernel = match (variant, checked) {
            (FusedVariant::Forward, false) => &p.forward,
            (FusedVariant::Forward, true) => &p.forward_checked,
            (FusedVariant::Roofline, false) => &p.roofline,
            (FusedVariant::Roofline, true) => &p.roofline_checked,
            (FusedVariant::Backward, false) => p.backward.as_ref().ok_or_else(missing)?,
            (FusedVariant::Backward, true) => p.backward_checked.as_ref().ok_or_else(missing)?,
            (FusedVariant::BackwardRoofline, false) => {
                p.backward_roofline.as_ref().ok_or_else(missing)?
            }
            (FusedVariant::BackwardRoofline, true) => {
                p.backward_roofline_checked.as_ref().ok_or_else(missing)?
            }
        };

        // Params: slot 0 global, slot 1 + s for segment s.
        let global = plan.global_params(&Params::global(
            &self.config,
            weights,
            plan.batch,
            levels.positions() as u32,
        ));
        let mut param_bytes = vec![0u8; (stride * slots) as usize];
        let mut put = |slot: usize, p: &Params| {
            let at = slot * stride as usize;
            param_bytes[at..at + std::mem::size_of::<Params>()]
                .copy_from_slice(bytemuck::bytes_of(p));
        };
        put(0, &global);
        for (s, seg) in plan.segments.iter().enumerate() {
            put(1 + s, &plan.params(&global, levels, seg));
        }
        for (g, group) in plan.count_groups.iter().enumerate() {
            put(count_slot0 + g, &plan.count_params(&global, group));
        }
        // Only the slots this plan uses: the pooled buffer may be larger than one binding.
        let partials_range = crate::gpu::plan::BindRange {
            offset: 0,
            size: PARTIAL_BYTES * b * plan.partials_per_image as u64,
            base: 0,
        };
        let params_size = std::num::NonZeroU64::new(std::mem::size_of::<Params>() as u64);
        let params_entry = |slot: u64| wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params_buf,
                offset: slot * stride,
                size: params_size,
            }),
        };
        let submitted = scoped(device, || {
            self.ctx.queue.write_buffer(params_buf, 0, &param_bytes);
            let mut groups = Vec::with_capacity(plan.segments.len());
            for (s, seg) in plan.segments.iter().enumerate() {
                let mut entries = vec![params_entry(1 + s as u64)];
                for (i, buf) in input_bufs.iter().enumerate() {
                    entries.push(range_entry(1 + i as u32, buf, seg.ranges[i]));
                }
                entries.push(range_entry(7, partials, partials_range));
                if let (Some(g), Some(np)) = (grad_bufs, num_pos) {
                    entries.push(whole(8, np));
                    for (i, buf) in g.iter().enumerate() {
                        entries.push(range_entry(9 + i as u32, buf, seg.ranges[i]));
                    }
                }
                groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fcos fused segment"),
                    layout: &kernel.layout,
                    entries: &entries,
                }));
            }
            let finalize_bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fcos finalize"),
                layout: &self.pipelines.finalize.layout,
                entries: &[
                    params_entry(0),
                    range_entry(1, partials, partials_range),
                    whole(2, image_losses),
                ],
            });
            // The count's dispatches, each over whole images of cnt_targets within
            // one binding (a user's buffer may also be larger than the layout).
            let count_bgs: Vec<(u32, wgpu::BindGroup)> = match num_pos {
                None => Vec::new(),
                Some(np) => plan
                    .count_groups
                    .iter()
                    .enumerate()
                    .map(|(g, group)| {
                        let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("fcos count"),
                            layout: &self.pipelines.count.layout,
                            entries: &[
                                params_entry((count_slot0 + g) as u64),
                                range_entry(1, input_bufs[4], group.range),
                                whole(2, np),
                            ],
                        });
                        (group.images, bg)
                    })
                    .collect(),
            };
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            {
                let timestamp_writes =
                    self.query_set
                        .as_ref()
                        .map(|q| wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fcos loss"),
                    timestamp_writes,
                });
                if !count_bgs.is_empty() {
                    pass.set_pipeline(&self.pipelines.count.pipeline);
                    for (images, bg) in &count_bgs {
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups(*images, 1, 1);
                    }
                }
                pass.set_pipeline(&kernel.pipeline);
                for (seg, bg) in plan.segments.iter().zip(&groups) {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(seg.tiles, plan.chunks, seg.images);
                }
                pass.set_pipeline(&self.pipelines.finalize.pipeline);
                pass.set_bind_group(0, &finalize_bg, &[]);
                pass.dispatch_workgroups(plan.batch, 1, 1);
            }
            encoder.copy_buffer_to_buffer(image_losses, 0, readback, 0, out_bytes);
            if let (Some(q), Some(ts)) = (&self.query_set, &pool.timestamps) {
                encoder.resolve_query_set(q, 0..2, ts, 0);
                encoder.copy_buffer_to_buffer(ts, 0, readback, out_bytes, 16);
            }
            if let (Some(g), Some(staging)) = (grad_bufs, &pool.grad_readback) {
                if matches!(grads, Some(Source::Pool)) {
                    let mut at = 0;
                    for (i, buf) in g.iter().enumerate() {
                        let bytes = self.input_bytes(levels, plan.batch as usize, i);
                        encoder.copy_buffer_to_buffer(buf, 0, staging, at, bytes);
                        at += bytes;
                    }
                }
            }
            self.ctx.queue.submit([encoder.finish()])
        })?;
        let bytes = self.map_read(readback, 0..out_bytes + 16, submitted)?;
        let images: Vec<ImageLoss> = bytemuck::pod_collect_to_vec(&bytes[..out_bytes as usize]);
        let kernel_time = self.query_set.as_ref().and_then(|_| {
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[out_bytes as usize..]);
            // End before start, or no ticks at all: no usable time (the caller
            // falls back to the wall clock).
            let ticks = ts.get(1)?.checked_sub(*ts.first()?).filter(|&t| t > 0)?;
            let ns = ticks as f64 * self.ctx.queue.get_timestamp_period() as f64;
            Some(Duration::from_nanos(ns as u64))
        });
        let f = |g: fn(&ImageLoss) -> f32| images.iter().map(|x| g(x) as f64).collect();
        let losses = Losses::from_per_image(
            f(|x| x.cls),
            f(|x| x.cnt),
            f(|x| x.reg),
            images.iter().map(|x| x.num_pos).collect(),
            self.config.add_centerness,
        );
        let flags = images.iter().fold(0, |f, x| f | x.flags);
        Ok((losses, kernel_time, flags))
    }
}

use fcos_loss::*;
use wgpu::util::DeviceExt;
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
fn main() {
    let batch = synthetic::coco_default().unwrap();
    let cfg = LossConfig::new(80);
    let mut e = FcosLoss::new(cfg.clone()).unwrap();
    println!("{} ts={}", e.adapter_name(), e.has_timestamps());
    let dev = e.context().device.clone();
    let buf = |d: &[f32]| {
        dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(d),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (c, n, r) = (
        buf(&batch.cls_logits.concat()),
        buf(&batch.cnt_logits.concat()),
        buf(&batch.reg_preds.concat()),
    );
    let (ct, nt, rt) = (
        buf(&batch.cls_targets),
        buf(&batch.cnt_targets),
        buf(&batch.reg_targets),
    );
    let di = DeviceInputs {
        batch: 8,
        cls_logits: &c,
        cnt_logits: &n,
        reg_preds: &r,
        cls_targets: &ct,
        cnt_targets: &nt,
        reg_targets: &rt,
    };
    for tw in [64u32, 256, 1024] {
        e.set_target_workgroups(tw);
        let _ = e.compute(&batch.levels, &batch.inputs()).unwrap();
        let (mut call, mut k, mut dk, mut rk, mut dc) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..9 {
            let t = e.compute_timed(&batch.levels, &batch.inputs()).unwrap();
            call.push(t.call.as_secs_f64() * 1e3);
            k.push(t.kernel.unwrap().as_secs_f64() * 1e3);
            let t = e.compute_device_timed(&batch.levels, &di).unwrap();
            dc.push(t.call.as_secs_f64() * 1e3);
            dk.push(t.kernel.unwrap().as_secs_f64() * 1e3);
            let t = e.roofline_device(&batch.levels, &di).unwrap();
            rk.push(t.kernel.unwrap().as_secs_f64() * 1e3);
        }
        println!(
            "tw {tw}: call {:.2} kernel {:.2} | dev call {:.2} dev kernel {:.2} | roofline {:.2}",
            med(call),
            med(k),
            med(dc),
            med(dk),
            med(rk)
        );
    }
    let w = LossWeights::default();
    let mut fb = vec![];
    let mut fbc = vec![];
    for _ in 0..5 {
        let t = e
            .forward_backward_timed(&batch.levels, &batch.inputs(), &w)
            .unwrap();
        fb.push(t.kernel.unwrap().as_secs_f64() * 1e3);
        fbc.push(t.call.as_secs_f64() * 1e3);
    }
    println!("fwd+bwd kernel {:.2} call {:.2}", med(fb), med(fbc));
}

//! dlib's face-recognition ResNet as face-api ships it in TF.js (`../shared/weights/face-resnet`):
//! 150x150 RGB face → 128-d embedding, stem + 14 residual blocks + head. Parameter names are the
//! TF.js names with `/` → `.` (`conv32_down.conv.filters`, `conv64_1.conv2.scale.weights`, `fc`), so
//! an import is checked name by name. `face-lfw62` adds a linear classifier over the 62 LFW people
//! with at least 20 images: the identification model that caches are planned for.

use super::{channels_last, Forward, ModelSpec, Normalization, Stage, Task};
use tch::{nn, Tensor};

/// The TF.js graph subtracts this RGB mean (0..255 units) and divides by 255.
pub const FACE_NORM: Normalization = Normalization {
    mean: [122.782 / 255.0, 117.001 / 255.0, 104.298 / 255.0],
    std: [1.0, 1.0, 1.0],
};

pub const INPUT_SIZE: i64 = 150;
pub const EMBEDDING_DIM: i64 = 128;
/// Classes of `face-lfw62`: the LFW people with at least 20 images, in name order (the order of
/// `data::lfw`'s identification splits; `gati fit-classifier` checks it).
pub const LFW62_NAMES: [&str; 62] = [
    "Alejandro_Toledo",
    "Alvaro_Uribe",
    "Amelie_Mauresmo",
    "Andre_Agassi",
    "Angelina_Jolie",
    "Ariel_Sharon",
    "Arnold_Schwarzenegger",
    "Atal_Bihari_Vajpayee",
    "Bill_Clinton",
    "Carlos_Menem",
    "Colin_Powell",
    "David_Beckham",
    "Donald_Rumsfeld",
    "George_Robertson",
    "George_W_Bush",
    "Gerhard_Schroeder",
    "Gloria_Macapagal_Arroyo",
    "Gray_Davis",
    "Guillermo_Coria",
    "Hamid_Karzai",
    "Hans_Blix",
    "Hugo_Chavez",
    "Igor_Ivanov",
    "Jack_Straw",
    "Jacques_Chirac",
    "Jean_Chretien",
    "Jennifer_Aniston",
    "Jennifer_Capriati",
    "Jennifer_Lopez",
    "Jeremy_Greenstock",
    "Jiang_Zemin",
    "John_Ashcroft",
    "John_Negroponte",
    "Jose_Maria_Aznar",
    "Juan_Carlos_Ferrero",
    "Junichiro_Koizumi",
    "Kofi_Annan",
    "Laura_Bush",
    "Lindsay_Davenport",
    "Lleyton_Hewitt",
    "Luiz_Inacio_Lula_da_Silva",
    "Mahmoud_Abbas",
    "Megawati_Sukarnoputri",
    "Michael_Bloomberg",
    "Naomi_Watts",
    "Nestor_Kirchner",
    "Paul_Bremer",
    "Pete_Sampras",
    "Recep_Tayyip_Erdogan",
    "Ricardo_Lagos",
    "Roh_Moo-hyun",
    "Rudolph_Giuliani",
    "Saddam_Hussein",
    "Serena_Williams",
    "Silvio_Berlusconi",
    "Tiger_Woods",
    "Tom_Daschle",
    "Tom_Ridge",
    "Tony_Blair",
    "Vicente_Fox",
    "Vladimir_Putin",
    "Winona_Ryder",
];
pub const LFW62_CLASSES: i64 = LFW62_NAMES.len() as i64;

/// conv2d + bias, then the per-channel affine `scale` (x·w + b), then ReLU where asked.
#[derive(Debug)]
struct ConvScale {
    filters: Tensor,
    bias: Tensor,
    scale_w: Tensor,
    scale_b: Tensor,
    stride: i64,
    padding: i64,
    relu: bool,
    /// After `prepare`: the scale folded into the conv (w·s, b·s + t), filters channels-last.
    fused: Option<(Tensor, Tensor)>,
}

impl ConvScale {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, relu: bool) -> Self {
        let conv = &p / "conv";
        let scale = &p / "scale";
        let zeros = nn::Init::Const(0.0);
        Self {
            filters: conv.var("filters", &[cout, cin, k, k], nn::init::DEFAULT_KAIMING_UNIFORM),
            bias: conv.var("bias", &[cout], zeros),
            scale_w: scale.var("weights", &[cout], nn::Init::Const(1.0)),
            scale_b: scale.var("biases", &[cout], zeros),
            stride,
            padding,
            relu,
            fused: None,
        }
    }

    fn prepare(&mut self) {
        let c = self.bias.size()[0];
        let w = &self.filters * self.scale_w.view([c, 1, 1, 1]);
        let b = &self.bias * &self.scale_w + &self.scale_b;
        self.fused = Some((channels_last(&w), b));
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = match &self.fused {
            Some((w, b)) => x.conv2d(w, Some(b), [self.stride; 2], [self.padding; 2], [1, 1], 1),
            None => self.forward_unfused(x),
        };
        if self.relu {
            y.relu()
        } else {
            y
        }
    }

    /// The TF.js graph's order of operations (fresh, untrained models use it).
    fn forward_unfused(&self, x: &Tensor) -> Tensor {
        let c = self.bias.size()[0];
        let y = x.conv2d(
            &self.filters,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        y * self.scale_w.view([1, c, 1, 1]) + self.scale_b.view([1, c, 1, 1])
    }
}

/// `conv32_down`: 7x7 stride-2 'valid' conv + ReLU, then 3x3 stride-2 'valid' max-pool.
#[derive(Debug)]
struct Stem {
    conv: ConvScale,
}

impl Forward for Stem {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.conv.fused.is_some() {
            channels_last(x)
        } else {
            x.shallow_clone()
        };
        self.conv.forward(&x).max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
    }

    fn prepare(&mut self) {
        self.conv.prepare();
    }
}

/// conv 3x3 + ReLU, conv 3x3, add the shortcut, ReLU. A `_down` block's first conv is stride-2
/// 'valid' and its shortcut a 2x2 average pool with zero channels appended when the width grows;
/// where pooled and conv maps disagree in size (8→3 vs 4, 4→1 vs 2) the conv branch gets a zero
/// row and column at the bottom/right, as the TF.js graph does.
#[derive(Debug)]
struct Residual {
    conv1: ConvScale,
    conv2: ConvScale,
    down: bool,
}

impl Forward for Residual {
    fn prepare(&mut self) {
        self.conv1.prepare();
        self.conv2.prepare();
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self.conv2.forward(&self.conv1.forward(x));
        if !self.down {
            return (out + x).relu();
        }
        let mut pooled = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        let mut out = out;
        if pooled.size()[2] != out.size()[2] {
            out = out.constant_pad_nd([0, 1, 0, 1]);
        }
        let grow = out.size()[1] - pooled.size()[1];
        if grow > 0 {
            pooled = pooled.constant_pad_nd([0, 0, 0, 0, 0, grow]);
        }
        (out + pooled).relu()
    }
}

/// Spatial mean, `fc` (no bias) → embedding; then the classifier for `face-lfw62`.
#[derive(Debug)]
struct Head {
    fc: Tensor,
    classifier: Option<nn::Linear>,
}

impl Forward for Head {
    fn forward(&self, x: &Tensor) -> Tensor {
        let e = x.mean_dim([2i64, 3].as_slice(), false, None).matmul(&self.fc);
        match &self.classifier {
            Some(c) => e.apply(c),
            None => e,
        }
    }
}

/// The 14 blocks: (name, input channels, output channels, down).
const BLOCKS: [(&str, i64, i64, bool); 14] = [
    ("conv32_1", 32, 32, false),
    ("conv32_2", 32, 32, false),
    ("conv32_3", 32, 32, false),
    ("conv64_down", 32, 64, true),
    ("conv64_1", 64, 64, false),
    ("conv64_2", 64, 64, false),
    ("conv64_3", 64, 64, false),
    ("conv128_down", 64, 128, true),
    ("conv128_1", 128, 128, false),
    ("conv128_2", 128, 128, false),
    ("conv256_down", 128, 256, true),
    ("conv256_1", 256, 256, false),
    ("conv256_2", 256, 256, false),
    ("conv256_down_out", 256, 256, true),
];

/// `classes`: `None` for the embedding model, `Some(n)` for an identification model.
pub(super) fn build(p: &nn::Path, name: &str, classes: Option<i64>) -> (ModelSpec, Vec<Stage>) {
    let mut stages = vec![Stage {
        name: "stem".into(),
        module: Box::new(Stem {
            conv: ConvScale::new(p / "conv32_down", 3, 32, 7, 2, 0, true),
        }),
    }];
    for (block, cin, cout, down) in BLOCKS {
        let bp = p / block;
        let (stride, padding) = if down { (2, 0) } else { (1, 1) };
        stages.push(Stage {
            name: block.to_string(),
            module: Box::new(Residual {
                conv1: ConvScale::new(&bp / "conv1", cin, cout, 3, stride, padding, true),
                conv2: ConvScale::new(&bp / "conv2", cout, cout, 3, 1, 1, false),
                down,
            }),
        });
    }
    stages.push(Stage {
        name: "head".into(),
        module: Box::new(Head {
            fc: p.var("fc", &[256, EMBEDDING_DIM], nn::init::DEFAULT_KAIMING_UNIFORM),
            classifier: classes.map(|n| nn::linear(p / "classifier", EMBEDDING_DIM, n, Default::default())),
        }),
    });
    let spec = ModelSpec {
        name: name.to_string(),
        input_shape: [3, INPUT_SIZE, INPUT_SIZE],
        num_classes: classes.unwrap_or(EMBEDDING_DIM),
        normalization: FACE_NORM,
        task: if classes.is_some() {
            Task::Classification
        } else {
            Task::Embedding
        },
    };
    (spec, stages)
}

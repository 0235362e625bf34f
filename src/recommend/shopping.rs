//! Product questions and product requests in a shopper's words, answered from the catalog.
//!
//! [`ProductIndex::understand`] reads one message against the catalog: which product it names
//! (titles and aliases, with typos and partial names, or "it" for the product the conversation
//! is about), what it asks about that product (stock, price, sizes, colours, details), or what a
//! request for products allows (a price range, a kind of product, a colour, "cheaper than that
//! one", "what goes with it"). Kinds come from the catalog itself (categories and the nouns that
//! end titles and aliases); occasion and style words ("for a summer wedding") are matched by
//! meaning: the message's embedding against each product's title and description. A request
//! never returns a product that breaks one of its constraints: none is better than a wrong one.
//!
//! The words that signal each question are the locale's (`[products]` of `prompts/<locale>.toml`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Product};

/// `[products]` of `prompts/<locale>.toml`: regexes (matched case-insensitively) for what a
/// message asks, and the locale's words for colours and kinds of product.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CueConfig {
    pub stock: String,
    pub price: String,
    pub sizes: String,
    pub colors: String,
    pub details: String,
    /// A request for products ("show me", "looking for"): with a kind, price or colour.
    pub find: String,
    /// A request that needs no constraint to be one ("recommend something", "gift ideas"):
    /// occasion and style words are then all there is to match.
    pub browse: String,
    pub goes_with: String,
    pub cheaper: String,
    /// "anything similar", "something like it": products like the one the conversation is about.
    pub similar: String,
    /// "the other one": the product mentioned before the last one.
    pub other: String,
    /// Openings of a follow-up that narrows the last request ("anything in black?", "what
    /// about shoes?"): what it does not say is kept from the last request.
    pub refine: String,
    /// "it", "this one": the product the conversation is about.
    pub refer: String,
    /// Topics that are not about a product ("shipping", "return"): a price or stock word next
    /// to one is not a product question.
    pub not_product: String,
    /// Colour words shoppers filter by.
    pub color_words: Vec<String>,
    /// Other words for kinds the catalog names ("jumper" = "sweater").
    #[serde(default)]
    pub kind_synonyms: BTreeMap<String, String>,
    /// Size words → the catalog's size labels ("medium" = "M").
    #[serde(default)]
    pub size_words: BTreeMap<String, String>,
}

/// Compiled [`CueConfig`].
#[derive(Debug, Clone)]
pub struct Cues {
    stock: Regex,
    price: Regex,
    sizes: Regex,
    colors: Regex,
    details: Regex,
    find: Regex,
    browse: Regex,
    goes_with: Regex,
    cheaper: Regex,
    similar: Regex,
    other: Regex,
    refine: Regex,
    refer: Regex,
    not_product: Regex,
    color_words: Vec<String>,
    kind_synonyms: BTreeMap<String, String>,
    size_words: BTreeMap<String, String>,
}

impl Cues {
    pub fn new(c: &CueConfig) -> Result<Cues, String> {
        let re = |name: &str, p: &str| {
            Regex::new(&format!("(?i){p}")).map_err(|e| format!("[products] {name}: {e}"))
        };
        Ok(Cues {
            stock: re("stock", &c.stock)?,
            price: re("price", &c.price)?,
            sizes: re("sizes", &c.sizes)?,
            colors: re("colors", &c.colors)?,
            details: re("details", &c.details)?,
            find: re("find", &c.find)?,
            browse: re("browse", &c.browse)?,
            goes_with: re("goes_with", &c.goes_with)?,
            cheaper: re("cheaper", &c.cheaper)?,
            similar: re("similar", &c.similar)?,
            other: re("other", &c.other)?,
            refine: re("refine", &c.refine)?,
            refer: re("refer", &c.refer)?,
            not_product: re("not_product", &c.not_product)?,
            color_words: c.color_words.iter().map(|w| w.to_lowercase()).collect(),
            kind_synonyms: c
                .kind_synonyms
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.to_lowercase()))
                .collect(),
            size_words: c
                .size_words
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect(),
        })
    }

    /// Reads `[products]` of `prompts/<locale>.toml`.
    pub fn load(prompts: &Path, locale: &str) -> Result<Cues, String> {
        let p = prompts.join(format!("{locale}.toml"));
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        #[derive(Deserialize)]
        struct Locale {
            products: CueConfig,
        }
        let l: Locale = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        Cues::new(&l.products)
    }
}

/// What a product question asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aspect {
    Details,
    Stock,
    Price,
    Sizes,
    Colors,
}

/// The catalog facts a reply about one product may use.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductFacts {
    pub id: String,
    pub title: String,
    /// Formatted for a reply ("$95"), when the catalog has a price.
    pub price: Option<String>,
    pub in_stock: bool,
    pub sizes: Vec<String>,
    pub colors: Vec<String>,
    pub description: Option<String>,
}

/// A message about products, as far as the catalog can answer it.
#[derive(Debug, Clone, PartialEq)]
pub enum ProductTurn {
    /// A question about one product.
    Ask {
        product: ProductFacts,
        aspects: Vec<Aspect>,
        /// A size the shopper asked for ("in a medium"), as the catalog writes it.
        size: Option<String>,
        /// A colour the shopper asked for.
        color: Option<String>,
        /// In-stock products like it, for a product that is sold out.
        alternatives: Vec<String>,
    },
    /// A request for products: those that meet every constraint, best match first.
    Find {
        /// The request in words for the reply ("sandals under $80").
        what: String,
        items: Vec<String>,
        /// Said as a request ("show me", a price limit); otherwise only a kind of product was
        /// named, which the policy takes when nothing else understood the message.
        explicit: bool,
        /// The request's constraints, for a follow-up that narrows it.
        request: Request,
    },
    /// "What goes with X": products from other categories that shoppers combine with it.
    GoesWith {
        product: ProductFacts,
        items: Vec<String>,
    },
}

/// A request's constraints as the conversation remembers them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    pub kind: Option<String>,
    pub color: Option<String>,
}

/// What the conversation knows about products so far.
#[derive(Debug, Clone, Default)]
pub struct ProductContext<'a> {
    /// Products mentioned in the conversation (or the page it was opened on), oldest first.
    pub mentioned: &'a [String],
    /// What the last product question asked (a bare "and the quilted jacket?" asks it again).
    pub last_aspects: &'a [Aspect],
    /// The last request for products, when the last product turn was one.
    pub last_request: Option<&'a Request>,
    /// Recommendation scores by id (popularity or the shopper's), to break ties.
    pub prior: Option<&'a HashMap<String, f32>>,
}

/// Price bounds, kind and colour a request allows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    /// Products of the kinds named (None: any kind).
    pub kinds: Option<BTreeSet<usize>>,
    /// The kind word as the shopper wrote it, for the reply.
    pub kind_word: Option<String>,
    pub color: Option<String>,
}

impl Constraints {
    fn request(&self) -> Request {
        Request {
            min_price: self.min_price,
            max_price: self.max_price,
            kind: self.kind_word.clone(),
            color: self.color.clone(),
        }
    }

    fn any(&self) -> bool {
        self.min_price.is_some()
            || self.max_price.is_some()
            || self.kinds.is_some()
            || self.color.is_some()
    }
}

/// The catalog, indexed for product questions. Build once per catalog.
pub struct ProductIndex {
    products: Vec<Product>,
    cues: Cues,
    /// Each product's names (title, aliases) as word lists.
    names: Vec<Vec<Vec<String>>>,
    /// How many products each name word belongs to (a word of one product identifies it).
    word_products: HashMap<String, usize>,
    /// Kind word (singular and plural forms) → products of that kind.
    kinds: HashMap<String, BTreeSet<usize>>,
    /// Unit vectors of "title. description" (row per product), when an encoder made them.
    vectors: Option<(Vec<f32>, usize)>,
    price_max: Vec<Regex>,
    price_min: Vec<Regex>,
    price_range: Vec<Regex>,
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Singular forms of an English plural noun, for matching "sandal" with "sandals". Nouns that
/// only exist as plurals keep their form (a "short" is not one of the "shorts").
fn forms(w: &str) -> Vec<String> {
    const PLURAL_ONLY: &[&str] = &["shorts", "jeans", "flats", "pants", "trousers", "pyjamas"];
    let mut out = vec![w.to_string()];
    if PLURAL_ONLY.contains(&w) {
        return out;
    }
    if let Some(s) = w.strip_suffix("ies") {
        out.push(format!("{s}y"));
    } else if let Some(s) = w
        .strip_suffix("es")
        .filter(|s| s.ends_with("ss") || s.ends_with("sh") || s.ends_with("ch") || s.ends_with('x'))
    {
        out.push(s.to_string());
    } else if let Some(s) = w
        .strip_suffix('s')
        .filter(|s| s.len() >= 3 && !s.ends_with('s'))
    {
        out.push(s.to_string());
    } else if !w.ends_with('s') {
        // Singular in the catalog: shoppers ask in the plural.
        out.push(
            if w.ends_with("ss") || w.ends_with("sh") || w.ends_with("ch") {
                format!("{w}es")
            } else {
                format!("{w}s")
            },
        );
    }
    out
}

/// Same word, allowing one typo in words of five letters or more ("linnen", "sandels").
fn same_word(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    // This runs for every word of a message against every catalog word, each turn: reject
    // cheaply before the edit distance and the allocating plural forms. One typo changes the
    // length by at most one; a plural form changes only the ending, by at most two letters.
    let (la, lb) = (a.chars().count(), b.chars().count());
    let diff = la.abs_diff(lb);
    if diff > 2 {
        return false;
    }
    if la.min(lb) >= 5 && diff <= 1 && strsim::damerau_levenshtein(a, b) <= 1 {
        return true;
    }
    a.chars().next() == b.chars().next()
        && (forms(a).iter().any(|f| f == b) || forms(b).iter().any(|f| f == a))
}

fn money(price: f64, currency: Option<&str>) -> String {
    let amount = if price.fract().abs() < 1e-9 {
        format!("{price:.0}")
    } else {
        format!("{price:.2}")
    };
    match currency.map(str::to_uppercase).as_deref() {
        None | Some("USD" | "CAD" | "AUD") => format!("${amount}"),
        Some("EUR") => format!("€{amount}"),
        Some("GBP") => format!("£{amount}"),
        Some("CNY" | "RMB") => format!("¥{amount}"),
        Some(c) => format!("{amount} {c}"),
    }
}

fn cue(s: &str) -> Regex {
    Regex::new(s).expect("static regex; this is a bug")
}

impl ProductIndex {
    /// Indexes `catalog` with the locale's cues. `vectors`: one unit-length embedding per
    /// product of [`ProductIndex::texts`], row-major, and its width.
    pub fn new(catalog: &Catalog, cues: Cues, vectors: Option<(Vec<f32>, usize)>) -> Self {
        let products = catalog.products.clone();
        let names: Vec<Vec<Vec<String>>> = products
            .iter()
            .map(|p| {
                std::iter::once(&p.title)
                    .chain(&p.aliases)
                    .map(|n| words(n))
                    .filter(|w| !w.is_empty())
                    .collect()
            })
            .collect();
        let mut word_products: HashMap<String, usize> = HashMap::new();
        for ns in &names {
            let set: BTreeSet<&String> = ns.iter().flatten().collect();
            for w in set {
                *word_products.entry(w.clone()).or_default() += 1;
            }
        }
        // Kinds: categories and the last word of each title and alias ("Strappy Sandals").
        let mut kinds: HashMap<String, BTreeSet<usize>> = HashMap::new();
        for (i, p) in products.iter().enumerate() {
            let mut heads: Vec<String> =
                names[i].iter().filter_map(|n| n.last().cloned()).collect();
            if let Some(c) = &p.category {
                heads.extend(words(c).last().cloned());
            }
            for h in heads {
                if h.len() < 3 || h == "set" {
                    continue;
                }
                for f in forms(&h) {
                    kinds.entry(f).or_default().insert(i);
                }
            }
        }
        let vectors = vectors.filter(|(v, d)| *d > 0 && v.len() == d * products.len());
        let n = r"\$?\s*(\d+(?:\.\d+)?)";
        ProductIndex {
            products,
            cues,
            names,
            word_products,
            kinds,
            vectors,
            price_max: vec![
                cue(&format!(
                    r"(?i)\b(?:under|below|less than|cheaper than|max(?:imum)?|up to|upto|no more than|not more than|within|at most|budget(?: is| of)?)\s*{n}"
                )),
                cue(&format!(r"(?i)(?:<=?|≤)\s*{n}")),
                cue(
                    r"(?i)\$?\s*(\d+(?:\.\d+)?)\s*(?:\$|dollars?|bucks|usd)?\s*(?:or less|or under|or below|max\b|tops\b)",
                ),
            ],
            price_min: vec![
                cue(&format!(
                    r"(?i)\b(?:over|above|more than|at least|min(?:imum)?|from)\s*{n}"
                )),
                cue(&format!(r"(?i)(?:>=?|≥)\s*{n}")),
            ],
            price_range: vec![
                cue(&format!(r"(?i)\bbetween\s*{n}\s*(?:and|-|to)\s*{n}")),
                cue(r"(?i)\$\s*(\d+(?:\.\d+)?)\s*(?:-|to)\s*\$?\s*(\d+(?:\.\d+)?)"),
            ],
        }
    }

    /// The text embedded for each product (in catalog order).
    pub fn texts(catalog: &Catalog) -> Vec<String> {
        catalog
            .products
            .iter()
            .map(|p| {
                let mut t = p.title.clone();
                if let Some(c) = &p.category {
                    t.push_str(&format!(" ({c})"));
                }
                if let Some(d) = &p.description {
                    t.push_str(". ");
                    t.push_str(d);
                }
                t
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.id == id)
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.products.iter().position(|p| p.id == id)
    }

    pub fn facts(&self, i: usize) -> ProductFacts {
        let p = &self.products[i];
        ProductFacts {
            id: p.id.clone(),
            title: p.title.clone(),
            price: p.price.map(|x| money(x, p.currency.as_deref())),
            in_stock: p.in_stock,
            sizes: p.sizes.clone(),
            colors: p.colors.clone(),
            description: p.description.clone(),
        }
    }

    /// The product a message names: a whole title or alias (typos allowed), else a partial
    /// name that fits one product only. Longer names win ("linen shirt dress" over "linen
    /// shirt").
    pub fn named(&self, text: &str) -> Option<usize> {
        let msg = words(text);
        // The catalog's name words the message says (a typo or a plural form allowed), each
        // with where it is said last: once per distinct word, not once per product naming it.
        let said: HashMap<&str, usize> = self
            .word_products
            .keys()
            .filter_map(|w| {
                msg.iter()
                    .rposition(|m| same_word(m, w))
                    .map(|p| (w.as_str(), p))
            })
            .collect();
        if said.is_empty() {
            return None;
        }
        let has = |w: &str| said.contains_key(w);
        let at = |w: &str| said.get(w).copied().unwrap_or(0);
        // Each product: whether one of its names is said whole, how many of its name words are
        // said, and where the last of them is. A product is named when a name is said whole,
        // or two of its words, or one word that belongs to it alone (and is no kind or colour:
        // "the cashmere one"). The best is the whole name with the most words, then the one
        // said last ("between the breton top and the poplin blouse... how much is the breton
        // top").
        let mut best: Option<(bool, usize, usize, usize)> = None;
        let mut tie = false;
        for (i, ns) in self.names.iter().enumerate() {
            let whole = ns.iter().any(|n| n.iter().all(|w| has(w)));
            let set: BTreeSet<&String> = ns.iter().flatten().collect();
            let shared: Vec<&&String> = set.iter().filter(|w| has(w)).collect();
            if shared.is_empty() {
                continue;
            }
            let unique = shared.iter().any(|w| {
                self.word_products.get(w.as_str()) == Some(&1)
                    && !self.kinds.contains_key(w.as_str())
                    && !self.cues.color_words.iter().any(|c| c == w.as_str())
                    && w.len() >= 4
            });
            if !(whole || shared.len() >= 2 || unique) {
                continue;
            }
            let pos = shared.iter().map(|w| at(w)).max().unwrap_or(0);
            let key = (whole, shared.len(), pos, i);
            match best {
                Some(b) if (b.0, b.1, b.2) > (key.0, key.1, key.2) => {}
                Some(b) if (b.0, b.1, b.2) == (key.0, key.1, key.2) => tie = true,
                _ => {
                    best = Some(key);
                    tie = false;
                }
            }
        }
        best.filter(|_| !tie).map(|b| b.3)
    }

    /// Price bounds, kind and colour in a message.
    pub fn constraints(&self, text: &str) -> Constraints {
        let mut c = Constraints::default();
        let num = |m: Option<regex::Match>| m.and_then(|m| m.as_str().parse::<f64>().ok());
        for re in &self.price_range {
            if let Some(cap) = re.captures(text) {
                let (a, b) = (num(cap.get(1)), num(cap.get(2)));
                if let (Some(a), Some(b)) = (a, b) {
                    c.min_price = Some(a.min(b));
                    c.max_price = Some(a.max(b));
                }
                break;
            }
        }
        if c.max_price.is_none() {
            c.max_price = self
                .price_max
                .iter()
                .find_map(|re| num(re.captures(text).and_then(|x| x.get(1))));
        }
        if c.min_price.is_none() {
            c.min_price = self
                .price_min
                .iter()
                .find_map(|re| num(re.captures(text).and_then(|x| x.get(1))));
        }
        let msg = words(text);
        let mut kinds: BTreeSet<usize> = BTreeSet::new();
        let mut word = None;
        for w in &msg {
            let w = self.cues.kind_synonyms.get(w).unwrap_or(w);
            if let Some(set) = self.kinds.get(w.as_str()) {
                kinds.extend(set.iter().copied());
                word.get_or_insert_with(|| w.clone());
            }
        }
        if !kinds.is_empty() {
            c.kinds = Some(kinds);
            c.kind_word = word;
        }
        c.color = self
            .cues
            .color_words
            .iter()
            .find(|col| {
                let cw = words(col);
                msg.windows(cw.len().max(1)).any(|win| win == cw.as_slice())
            })
            .cloned();
        c
    }

    fn fits(&self, i: usize, c: &Constraints) -> bool {
        let p = &self.products[i];
        if !p.in_stock {
            return false;
        }
        if let Some(max) = c.max_price {
            if p.price.is_none_or(|x| x > max + 1e-9) {
                return false;
            }
        }
        if let Some(min) = c.min_price {
            if p.price.is_none_or(|x| x < min - 1e-9) {
                return false;
            }
        }
        if let Some(k) = &c.kinds {
            if !k.contains(&i) {
                return false;
            }
        }
        if let Some(col) = &c.color {
            let has = if p.colors.is_empty() {
                let text = format!("{} {}", p.title, p.description.as_deref().unwrap_or(""));
                words(&text).contains(col)
            } else {
                p.colors.iter().any(|x| words(x).contains(col))
            };
            if !has {
                return false;
            }
        }
        true
    }

    /// Products that meet every constraint, best first: closest in meaning to the message
    /// (occasion and style words), then the recommender's prior.
    pub fn find(
        &self,
        c: &Constraints,
        embedding: Option<&[f32]>,
        prior: Option<&HashMap<String, f32>>,
        exclude: &[usize],
        k: usize,
    ) -> Vec<usize> {
        let mut scored: Vec<(f32, usize)> = (0..self.products.len())
            .filter(|i| !exclude.contains(i) && self.fits(*i, c))
            .map(|i| {
                let sem = self.cosine(i, embedding).unwrap_or(0.0);
                let pri = prior
                    .and_then(|p| p.get(&self.products[i].id))
                    .copied()
                    .unwrap_or(0.0);
                (sem + 0.05 * pri, i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn cosine(&self, i: usize, embedding: Option<&[f32]>) -> Option<f32> {
        let (v, d) = self.vectors.as_ref()?;
        let e = embedding.filter(|e| e.len() == *d)?;
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        let row = &v[i * d..(i + 1) * d];
        Some(row.iter().zip(e).map(|(a, b)| a * b).sum::<f32>() / norm)
    }

    /// The request in words: "black dresses under $60".
    fn describe(&self, c: &Constraints) -> String {
        let mut s = String::new();
        if let Some(col) = &c.color {
            s.push_str(col);
            s.push(' ');
        }
        match &c.kind_word {
            Some(w) => {
                let plural = forms(w)
                    .into_iter()
                    .find(|f| f.ends_with('s'))
                    .unwrap_or_else(|| w.clone());
                s.push_str(&plural);
            }
            None => s.push_str("pieces"),
        }
        let cur = self.products.first().and_then(|p| p.currency.as_deref());
        match (c.min_price, c.max_price) {
            (Some(a), Some(b)) => {
                s.push_str(&format!(" between {} and {}", money(a, cur), money(b, cur)))
            }
            (None, Some(b)) => s.push_str(&format!(" under {}", money(b, cur))),
            (Some(a), None) => s.push_str(&format!(" over {}", money(a, cur))),
            (None, None) => {}
        }
        s
    }

    /// Reads one message against the catalog. `None`: not about products (or not answerable
    /// from the catalog).
    pub fn understand(
        &self,
        text: &str,
        embedding: Option<&[f32]>,
        ctx: &ProductContext,
        k: usize,
    ) -> Option<ProductTurn> {
        let cues = &self.cues;
        let named = self.named(text);
        let refers = cues.refer.is_match(text);
        let other = cues.other.is_match(text);
        let mut known = ctx
            .mentioned
            .iter()
            .rev()
            .filter_map(|id| self.index_of(id));
        let context = if other {
            // "the other one": the one before the last.
            known.nth(1)
        } else {
            known.next()
        };
        let mut c = self.constraints(text);
        let off_topic = cues.not_product.is_match(text);
        let n_words = words(text).len();
        // The product the message is about: named, or the conversation's when the message
        // refers to it ("is it in stock?") or says nothing else ("how much?").
        let about = named.or(
            if c.kinds.is_none() && !off_topic && (refers || other || n_words <= 3) {
                context
            } else {
                None
            },
        );

        if cues.goes_with.is_match(text) {
            if let Some(i) = named.or(context) {
                // "what goes with the wrap dress": the dress's own kind is not a constraint.
                if c.kinds.as_ref().is_some_and(|k| k.contains(&i)) {
                    c.kinds = None;
                    c.kind_word = None;
                }
                return Some(ProductTurn::GoesWith {
                    product: self.facts(i),
                    items: self.goes_with(i, &c, ctx.prior, k),
                });
            }
        }
        if cues.cheaper.is_match(text) {
            if let Some(i) = named.or(context) {
                let p = &self.products[i];
                if let Some(price) = p.price {
                    c.max_price = Some(c.max_price.map_or(price - 0.01, |m| m.min(price - 0.01)));
                }
                if c.kinds.is_none() {
                    if let Some(cat) = &p.category {
                        let same: BTreeSet<usize> = (0..self.products.len())
                            .filter(|&j| self.products[j].category.as_ref() == Some(cat))
                            .collect();
                        c.kinds = Some(same);
                        c.kind_word = words(cat).last().cloned();
                    }
                }
                let items = self.find(&c, embedding, ctx.prior, &[i], k);
                return Some(ProductTurn::Find {
                    what: self.describe(&c),
                    items: items.iter().map(|&j| self.products[j].id.clone()).collect(),
                    explicit: true,
                    request: c.request(),
                });
            }
        }
        if cues.similar.is_match(text) && c.kinds.is_none() && !off_topic {
            if let Some(i) = named.or(context) {
                let p = &self.products[i];
                return Some(ProductTurn::Find {
                    what: format!("pieces like the {}", p.title),
                    items: self.like(i, embedding, ctx.prior, k),
                    explicit: true,
                    request: Request::default(),
                });
            }
        }
        let mut aspects: Vec<Aspect> = [
            (Aspect::Stock, &cues.stock),
            (Aspect::Price, &cues.price),
            (Aspect::Sizes, &cues.sizes),
            (Aspect::Colors, &cues.colors),
            (Aspect::Details, &cues.details),
        ]
        .into_iter()
        .filter(|(_, re)| re.is_match(text))
        .map(|(a, _)| a)
        .collect();
        let size = self.size_in(text, about);
        if size.is_some() && !aspects.contains(&Aspect::Sizes) {
            aspects.push(Aspect::Sizes);
        }
        // "and the quilted jacket?" after a price question asks the price again.
        if aspects.is_empty() && about.is_some() && n_words <= 6 && (named.is_some() || other) {
            aspects.extend_from_slice(ctx.last_aspects);
        }
        // A price limit makes it a request even when one product is named ("sandals under 80").
        let bounded = c.min_price.is_some() || c.max_price.is_some();
        if let Some(i) = about.filter(|_| !aspects.is_empty() && !bounded && !off_topic) {
            let p = &self.products[i];
            let color = c
                .color
                .clone()
                .filter(|_| aspects.contains(&Aspect::Colors));
            if color.is_some() && !aspects.contains(&Aspect::Colors) {
                aspects.push(Aspect::Colors);
            }
            aspects.sort();
            aspects.dedup();
            let alternatives = if p.in_stock {
                Vec::new()
            } else {
                self.like(i, embedding, ctx.prior, k.saturating_sub(1).max(1))
            };
            return Some(ProductTurn::Ask {
                product: self.facts(i),
                aspects,
                size,
                color,
                alternatives,
            });
        }
        // A request: a request word, or a kind / price limit / colour named without a
        // product question.
        let browse = cues.browse.is_match(text);
        let asks =
            browse || cues.find.is_match(text) || (cues.stock.is_match(text) && named.is_none());
        if off_topic && !bounded {
            return None;
        }
        if named.is_some() && !bounded {
            return None;
        }
        // "do you have a shop in toronto?" asks for no kind of product.
        if !c.any() && !browse && ctx.last_request.is_none() {
            return None;
        }
        // A follow-up narrowing the last request keeps what it does not say.
        let refines = ctx
            .last_request
            .filter(|_| cues.refine.is_match(text) && n_words <= 8);
        if let Some(r) = refines {
            if !bounded {
                c.min_price = r.min_price;
                c.max_price = r.max_price;
            }
            if c.kinds.is_none() {
                if let Some(k) = r.kind.as_ref().and_then(|w| self.kinds.get(w)) {
                    c.kinds = Some(k.clone());
                    c.kind_word = r.kind.clone();
                }
            }
            if c.color.is_none() {
                c.color = r.color.clone();
            }
        }
        if !c.any() && asks && embedding.is_none() {
            return None;
        }
        let items = self.find(&c, embedding, ctx.prior, &[], k);
        Some(ProductTurn::Find {
            what: self.describe(&c),
            items: items.iter().map(|&j| self.products[j].id.clone()).collect(),
            explicit: asks || bounded || refines.is_some(),
            request: c.request(),
        })
    }

    /// A size the message asks for, in the catalog's words for the product's sizes.
    fn size_in(&self, text: &str, about: Option<usize>) -> Option<String> {
        let sizes = &self.products[about?].sizes;
        let msg = words(text);
        for (i, w) in msg.iter().enumerate() {
            let two = msg.get(i + 1).map(|n| format!("{w} {n}"));
            for cand in two.iter().chain(std::iter::once(w)) {
                if let Some(label) = self.cues.size_words.get(cand) {
                    return Some(label.clone());
                }
            }
            let prev = if i > 0 { msg[i - 1].as_str() } else { "" };
            let digits = w.chars().all(|c| c.is_ascii_digit()) && w.len() <= 3;
            if matches!(prev, "size" | "sz" | "a" | "an" | "in") {
                if let Some(s) = sizes.iter().find(|s| s.eq_ignore_ascii_case(w)) {
                    return Some(s.clone());
                }
            }
            // "size 12" is a size even where the catalog lacks it (the answer says so).
            if matches!(prev, "size" | "sz") && (digits || w.len() <= 3) {
                return Some(w.to_uppercase());
            }
        }
        None
    }

    /// In-stock products like `i` (same category first, then closest in meaning).
    fn like(
        &self,
        i: usize,
        _embedding: Option<&[f32]>,
        prior: Option<&HashMap<String, f32>>,
        k: usize,
    ) -> Vec<String> {
        let p = &self.products[i];
        let mut scored: Vec<(f32, usize)> = (0..self.products.len())
            .filter(|&j| j != i && self.products[j].in_stock)
            .map(|j| {
                let same = (self.products[j].category == p.category) as u8 as f32;
                let sem = self.pair_cosine(i, j).unwrap_or(0.0);
                let pri = prior
                    .and_then(|x| x.get(&self.products[j].id))
                    .copied()
                    .unwrap_or(0.0);
                (same + sem + 0.05 * pri, j)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(k)
            .map(|(_, j)| self.products[j].id.clone())
            .collect()
    }

    fn pair_cosine(&self, i: usize, j: usize) -> Option<f32> {
        let (v, d) = self.vectors.as_ref()?;
        let a = &v[i * d..(i + 1) * d];
        let b = &v[j * d..(j + 1) * d];
        Some(a.iter().zip(b).map(|(x, y)| x * y).sum())
    }

    /// What goes with `i`: in-stock products of other categories, by the recommender's prior
    /// (what shoppers combine) and closeness in style.
    fn goes_with(
        &self,
        i: usize,
        c: &Constraints,
        prior: Option<&HashMap<String, f32>>,
        k: usize,
    ) -> Vec<String> {
        let p = &self.products[i];
        let mut scored: Vec<(f32, usize)> = (0..self.products.len())
            .filter(|&j| {
                let q = &self.products[j];
                j != i && q.category != p.category && q.price.is_some() && self.fits(j, c)
            })
            .map(|j| {
                let sem = self.pair_cosine(i, j).unwrap_or(0.0);
                let pri = prior
                    .and_then(|x| x.get(&self.products[j].id))
                    .copied()
                    .unwrap_or(0.0);
                (sem + 0.3 * pri, j)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // One per category: a look, not three bags.
        let mut seen = BTreeSet::new();
        scored
            .into_iter()
            .filter(|(_, j)| seen.insert(self.products[*j].category.clone()))
            .take(k)
            .map(|(_, j)| self.products[j].id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cues() -> Cues {
        Cues::load(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts"),
            "en",
        )
        .expect("prompts/en.toml [products]")
    }

    fn index() -> ProductIndex {
        let (cat, bad) = Catalog::load(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("index/catalog.csv"),
        )
        .expect("demo catalog");
        assert!(bad.is_empty(), "{bad:?}");
        ProductIndex::new(&cat, cues(), None)
    }

    fn id(ix: &ProductIndex, i: Option<usize>) -> Option<&str> {
        i.map(|i| ix.products[i].id.as_str())
    }

    #[test]
    fn same_word_allows_one_typo_and_plural_forms_only() {
        for (a, b) in [
            ("linnen", "linen"),
            ("sandels", "sandals"),
            ("sandals", "sandal"),
            ("dresses", "dress"),
            ("berries", "berry"),
            ("scarf", "scarf"),
        ] {
            assert!(same_word(a, b) && same_word(b, a), "{a} ~ {b}");
        }
        for (a, b) in [
            ("bag", "bags2"),
            ("cardigan", "cardigans2x"),
            ("linen", "linens2"),
            ("hat", "hot"),
            ("coat", "boats"),
        ] {
            assert!(!same_word(a, b) && !same_word(b, a), "{a} !~ {b}");
        }
    }

    #[test]
    fn products_are_named_by_title_alias_typo_or_a_word_of_their_own() {
        let ix = index();
        assert_eq!(
            id(&ix, ix.named("is the linen shirt in stock?")),
            Some("jp-001")
        );
        assert_eq!(id(&ix, ix.named("the linen shirt dress")), Some("jp-002"));
        assert_eq!(
            id(&ix, ix.named("how much is the wrap midi dress")),
            Some("jp-003")
        );
        assert_eq!(
            id(&ix, ix.named("hw much is the linnen shirt")),
            Some("jp-001")
        );
        assert_eq!(
            id(&ix, ix.named("is the cashmere one nice")),
            Some("jp-013")
        );
        assert_eq!(id(&ix, ix.named("do you have sandels")), Some("jp-028"));
        // A kind alone names no product; nor does an unrelated message.
        assert_eq!(ix.named("i want a dress"), None);
        assert_eq!(ix.named("where is my order"), None);
    }

    #[test]
    fn price_kind_and_colour_constraints() {
        let ix = index();
        let c = ix.constraints("show me sandals under 80");
        assert_eq!(c.max_price, Some(80.0));
        assert!(c.kinds.as_ref().is_some_and(|k| k.len() == 1));
        let c = ix.constraints("gift for my dad under $60");
        assert_eq!((c.max_price, c.kinds.is_none()), (Some(60.0), true));
        let c = ix.constraints("dresses between $70 and 90");
        assert_eq!((c.min_price, c.max_price), (Some(70.0), Some(90.0)));
        let c = ix.constraints("any black dresses?");
        assert_eq!(c.color.as_deref(), Some("black"));
        let items = ix.find(&c, None, None, &[], 10);
        assert!(!items.is_empty());
        for i in items {
            let p = &ix.products[i];
            assert_eq!(p.category.as_deref(), Some("dresses"), "{p:?}");
            assert!(p.colors.iter().any(|x| x.contains("black")), "{p:?}");
        }
        // Order numbers and quantities are not prices.
        let c = ix.constraints("my order 4471-209 has 2 items");
        assert_eq!((c.min_price, c.max_price), (None, None));
    }

    #[test]
    fn requests_never_break_their_constraints() {
        let ix = index();
        let ctx = ProductContext::default();
        let Some(ProductTurn::Find {
            items,
            what,
            explicit,
            ..
        }) = ix.understand("show me sandals under 80", None, &ctx, 3)
        else {
            panic!("a request")
        };
        assert!(explicit);
        assert_eq!(what, "sandals under $80");
        assert_eq!(items, vec!["jp-028".to_string()]);
        let Some(ProductTurn::Find { items, .. }) =
            ix.understand("gift for my dad under $60", None, &ctx, 3)
        else {
            panic!("a request")
        };
        assert_eq!(items.len(), 3);
        for id in &items {
            let p = ix.product(id).expect("known");
            assert!(p.price.is_some_and(|x| x <= 60.0) && p.in_stock, "{p:?}");
        }
        // Nothing fits: nothing is shown.
        let Some(ProductTurn::Find { items, .. }) = ix.understand("boots under $20", None, &ctx, 3)
        else {
            panic!("a request")
        };
        assert!(items.is_empty());
    }

    #[test]
    fn questions_about_a_named_or_referred_product() {
        let ix = index();
        let none = ProductContext::default();
        let Some(ProductTurn::Ask {
            product, aspects, ..
        }) = ix.understand("is the linen shirt in stock?", None, &none, 3)
        else {
            panic!("a question")
        };
        assert_eq!(
            (product.id.as_str(), aspects),
            ("jp-001", vec![Aspect::Stock])
        );
        assert_eq!(product.price.as_deref(), Some("$59"));
        // Sold out: alternatives in stock.
        let Some(ProductTurn::Ask {
            product,
            alternatives,
            ..
        }) = ix.understand("do u have the ballet flats", None, &none, 3)
        else {
            panic!("a question")
        };
        assert!(!product.in_stock);
        assert!(!alternatives.is_empty());
        // "it" is the product the conversation is about.
        let mentioned = vec!["jp-003".to_string()];
        let ctx = ProductContext {
            mentioned: &mentioned,
            ..ProductContext::default()
        };
        let Some(ProductTurn::Ask {
            product,
            aspects,
            size,
            ..
        }) = ix.understand("do you have it in a medium?", None, &ctx, 3)
        else {
            panic!("a question")
        };
        assert_eq!(product.id, "jp-003");
        assert!(aspects.contains(&Aspect::Sizes));
        assert_eq!(size.as_deref(), Some("M"));
        let Some(ProductTurn::Ask { aspects, .. }) = ix.understand("how much?", None, &ctx, 3)
        else {
            panic!("a question")
        };
        assert_eq!(aspects, vec![Aspect::Price]);
        // Not product questions, even with a product in the conversation.
        assert_eq!(ix.understand("how much is shipping?", None, &ctx, 3), None);
        assert_eq!(
            ix.understand("i want to return the linen shirt", None, &none, 3),
            None
        );
        assert_eq!(ix.understand("where is my order", None, &ctx, 3), None);
    }

    #[test]
    fn what_goes_with_and_cheaper_exclude_the_product() {
        let ix = index();
        let none = ProductContext::default();
        let Some(ProductTurn::GoesWith { product, items }) =
            ix.understand("what goes with the wrap midi dress?", None, &none, 3)
        else {
            panic!("goes with")
        };
        assert_eq!(product.id, "jp-003");
        assert_eq!(items.len(), 3);
        for id in &items {
            let p = ix.product(id).expect("known");
            assert_ne!(p.category.as_deref(), Some("dresses"), "{p:?}");
        }
        let mentioned = vec!["jp-003".to_string()];
        let ctx = ProductContext {
            mentioned: &mentioned,
            ..ProductContext::default()
        };
        let Some(ProductTurn::Find { items, .. }) =
            ix.understand("anything cheaper?", None, &ctx, 3)
        else {
            panic!("cheaper")
        };
        assert!(!items.is_empty());
        for id in &items {
            let p = ix.product(id).expect("known");
            assert!(p.price.is_some_and(|x| x < 95.0) && id != "jp-003", "{p:?}");
            assert_eq!(p.category.as_deref(), Some("dresses"));
        }
    }
}

"""A multilingual test corpus written for jv4's tests.

Short and medium texts in many scripts, code, emoji, whitespace runs, very
long words, special-token look-alikes and the empty string. All NFC.
"""

from __future__ import annotations

_HANDWRITTEN = [
    "",
    " ",
    "a",
    "Hello world",
    " Hello world",
    "hello   world",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "An embedding maps a text to a point in a vector space.",
    "Matryoshka representations keep the leading dimensions most informative.",
    "I can't believe it's already December; we'll see what's next.",
    "Numbers: 3.14159, 2,718, -42, 1e-6, 0x1F, 100%",
    "Dates like 2026-11-27 and times like 13:45:00 appear in logs.",
    "E-mail me at someone@example.org or call +49 30 1234567.",
    "ÄÖÜ äöü ß — Größenordnung, Straße, Fußgängerübergänge.",
    "Les élèves étudient à l'école près de la forêt.",
    "¿Dónde está la biblioteca? ¡Está cerrada hoy!",
    "Não há mal que sempre dure, nem bem que nunca acabe.",
    "Dziękuję bardzo za pomoc, to było świetne.",
    "Čeština má háčky a čárky: příliš žluťoučký kůň.",
    "Türkçe karakterler: ğ, ı, ş, ç, ö, ü ve İstanbul.",
    "Ελληνικά: η γρήγορη καφέ αλεπού πηδά πάνω από τον σκύλο.",
    "Русский текст: быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "Українська мова має літери ї, є, ґ.",
    "Български: Съединението прави силата.",
    "עברית: שלום עולם, מה שלומך היום?",
    "العربية: مرحبا بالعالم، كيف حالك اليوم؟",
    "اللغة العربية تُكتب من اليمين إلى اليسار مع التشكيل: كَتَبَ",
    "فارسی: زبان فارسی زیباست.",
    "हिन्दी: नमस्ते दुनिया, आप कैसे हैं?",
    "संस्कृतम्: वसुधैव कुटुम्बकम्",
    "मराठी भाषा महाराष्ट्रात बोलली जाते.",
    "বাংলা: আমি বাংলায় গান গাই।",
    "தமிழ்: யாதும் ஊரே யாவரும் கேளிர்.",
    "ไทย: สวัสดีครับ ยินดีที่ได้รู้จัก",
    "Tiếng Việt: Xin chào thế giới, hôm nay trời đẹp quá.",
    "中文：今天天气很好，我们去公园散步吧。",
    "這是一個繁體中文的句子，包含標點符號。",
    "日本語：吾輩は猫である。名前はまだ無い。",
    "カタカナとひらがなと漢字が混ざった文章です。",
    "한국어: 안녕하세요, 만나서 반갑습니다.",
    "ქართული ენა უნიკალური დამწერლობით.",
    "Հայերեն: Բարեւ աշխարհ",
    "አማርኛ: ሰላም ለዓለም",
    "ᐃᓄᒃᑎᑐᑦ syllabics",
    "Emoji: 🦙🚀✨🔥 and 👩‍👩‍👧‍👦 family",
    "🙂🙃😉😊😇🥰😍🤩😘😗☺️😚😙",
    "Flags 🇩🇪🇫🇷🇯🇵 and skin tones 👍🏽👍🏿",
    "Math: ∀x ∈ ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫ f(x) dx ≈ π",
    "Arrows → ← ↑ ↓ ⇒ ⇔ and boxes ┌─┐│└┘",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += v[i] * w[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); }",
    "<html><body><p class=\"x\">Hello &amp; welcome</p></body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "git commit -m 'fix: handle empty input' && git push origin main",
    "$ pip install jv4 && python -c 'import jv4'",
    "\t\tTabbed\tcolumns\there",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nendings",
    "trailing spaces     ",
    "     leading spaces",
    "a    b     c      d",
    "\n\n\n",
    "   \t \n  ",
    "Supercalifragilisticexpialidocious",
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a very long word.",
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    "a" * 300,
    "ab" * 200,
    "x" * 40 + "y" * 40 + "z" * 40,
    "0123456789" * 20,
    "!!!???...,,,;;;:::",
    "--------------------------------------------------",
    "____init____ __main__ __dunder__",
    "CamelCaseIdentifiersAreCommonInCode",
    "snake_case_identifiers_are_common_too",
    "URL: https://example.com/path?query=1&other=two#frag",
    "Mixed: English, 中文, العربية, हिन्दी, 日本語 in one line.",
    "Code-switching: Ich habe das meeting verschoben, ok?",
    "The special token text <|endoftext|> inside plain text.",
    "Chat markup <|im_start|>user\nhi<|im_end|>",
    "Zero width joiner a\u200db and non-breaking\u00a0space",
    "Quotes: “double”, ‘single’, «guillemets», „German“",
    "Currency: $100, €50, £20, ¥1000, ₹500, ₿0.01",
    "Roman numerals: Ⅰ Ⅱ Ⅲ Ⅳ and circled ① ② ③",
    "Fullwidth: ＡＢＣ１２３ and halfwidth ｶﾀｶﾅ",
    "Query: a text that already starts with a prefix",
    "Passage: another text that starts with a prefix",
]

_TOPICS = [
    ("en", "Retrieval systems rank passages by similarity to the query vector."),
    ("de", "Die Suche vergleicht den Anfragevektor mit allen Dokumentvektoren."),
    ("fr", "La recherche compare le vecteur de la requête à ceux des documents."),
    ("zh", "检索系统根据与查询向量的相似度对段落进行排序。"),
    ("ja", "検索システムはクエリベクトルとの類似度で文章を並べ替えます。"),
    ("ar", "ترتب أنظمة الاسترجاع المقاطع حسب تشابهها مع متجه الاستعلام."),
    ("hi", "खोज प्रणाली प्रश्न वेक्टर से समानता के आधार पर अनुच्छेदों को क्रमबद्ध करती है।"),
    ("ru", "Поисковые системы ранжируют фрагменты по сходству с вектором запроса."),
    ("ko", "검색 시스템은 질의 벡터와의 유사도로 문단의 순위를 매깁니다."),
    ("es", "Los sistemas de búsqueda ordenan los pasajes por similitud con la consulta."),
]


def corpus() -> list[str]:
    """≥ 100 strings: the handwritten ones plus topic sentences repeated to
    medium length (one to several hundred tokens)."""
    out = list(_HANDWRITTEN)
    for i, (_, sentence) in enumerate(_TOPICS):
        out.append(sentence)
        out.append(" ".join([sentence] * (2 + i)))
    return out


CORPUS = corpus()
assert len(CORPUS) >= 100, len(CORPUS)

"""Short texts in the nine languages the embedding tests cover."""

# (language, query, its passage): each query must find its own passage among its language's.
PAIRS = [
    (
        "en",
        "how do I bake bread at home",
        "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
    ),
    ("en", "what is the capital of France", "Paris is the capital and largest city of France."),
    (
        "de",
        "Wie backe ich Brot zu Hause",
        "Mehl, Wasser, Hefe und Salz mischen, den Teig gehen lassen und im heißen Ofen backen.",
    ),
    (
        "de",
        "Was ist die Hauptstadt von Frankreich",
        "Paris ist die Hauptstadt und größte Stadt Frankreichs.",
    ),
    (
        "fr",
        "comment faire du pain à la maison",
        "Mélangez farine, eau, levure et sel, laissez lever la pâte puis faites-la cuire au four.",
    ),
    ("fr", "quelle est la capitale de l'Allemagne", "Berlin est la capitale de l'Allemagne."),
    (
        "es",
        "cómo hacer pan en casa",
        "Mezcla harina, agua, levadura y sal, deja que la masa suba y hornéala.",
    ),
    ("es", "cuál es la capital de Italia", "Roma es la capital de Italia."),
    ("zh", "如何在家烤面包", "把面粉、水、酵母和盐混合，让面团发酵，然后放进烤箱烘烤。"),
    ("zh", "日本的首都是哪里", "东京是日本的首都。"),
    (
        "ja",
        "家でパンを焼く方法",
        "小麦粉、水、イースト、塩を混ぜて生地を発酵させ、オーブンで焼きます。",
    ),
    ("ja", "フランスの首都はどこですか", "パリはフランスの首都です。"),
    (
        "ar",
        "كيف أخبز الخبز في المنزل",
        "اخلط الدقيق والماء والخميرة والملح واترك العجين يختمر ثم اخبزه في الفرن.",
    ),
    ("ar", "ما هي عاصمة مصر", "القاهرة هي عاصمة مصر."),
    (
        "ru",
        "как испечь хлеб дома",
        "Смешайте муку, воду, дрожжи и соль, дайте тесту подняться и испеките его в духовке.",
    ),
    ("ru", "какая столица Испании", "Мадрид является столицей Испании."),
    ("hi", "घर पर रोटी कैसे बनाएं", "आटा, पानी और नमक मिलाकर गूंथें, फिर तवे पर सेंकें।"),
    ("hi", "भारत की राजधानी क्या है", "नई दिल्ली भारत की राजधानी है।"),
]

"""Simulator of Amazon Comprehend's DetectSentiment and BatchDetectSentiment.

JSON 1.1 protocol: POST / with X-Amz-Target: Comprehend_20171127.<operation> and
Content-Type application/x-amz-json-1.1, SigV4 signing name "comprehend". The limits are
Comprehend's documented ones: LanguageCode one of the twelve languages DetectSentiment
supports (else UnsupportedLanguageException), Text at most 5,000 bytes of UTF-8 (else
TextSizeLimitExceededException), at most 25 documents a batch (else
BatchSizeLimitExceededException). In a batch, a document over the size limit is reported in
ErrorList at its index and the others are scored, so clients see per-document errors.

The scorer is a small lexicon of sentiment words per language, not Comprehend's model, so that
results are deterministic and explainable: each sentiment word counts 1 (1.5 beside an
intensifier such as "very"), a negator in the few words before it ("not good"; after it in
Hindi and Japanese, both ways in German) flips its polarity at 0.75, and the two totals become
the four scores: NEUTRAL wins without evidence, MIXED when both polarities are about as strong.
Words are matched whole in languages written with spaces, and by longest match in Chinese,
Japanese and Korean, whose lexicons also list common negated forms (不好, 良くない, 안좋).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from azure_ai_sim.sim.aws import (
    JSON_11,
    AWSError,
    AWSSimulator,
    Operation,
    json_11_response,
)
from azure_ai_sim.sim.server import Request, Response

TARGET_PREFIX = "Comprehend_20171127."
LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "ar", "hi", "ja", "ko", "zh", "zh-TW")
MAX_TEXT_BYTES = 5000
MAX_BATCH_DOCUMENTS = 25

POSITIVE, NEGATIVE, NEGATOR, INTENSIFIER, NEUTRAL = "+", "-", "!", "*", "0"
NEGATION_WINDOW = 3  # words before a sentiment word that can negate it
NEGATION_WINDOW_AFTER = 2
NEGATED_WEIGHT = 0.75  # "not bad" is weaker praise than "good"
INTENSIFIED_WEIGHT = 1.5
NEUTRAL_PRIOR = 0.8  # the neutral score's weight when no sentiment word is found
FLOOR = 0.02  # no score is ever exactly 0, as in Comprehend's answers
_WORD = re.compile(r"[\w\u0600-\u06ff\u0900-\u097f]+")  # \w alone splits Devanagari vowels
_CONTRACTED_NOT = re.compile(r"n['\u2019]t\b")


def _fold(text: str) -> str:
    """Lower case without accents, so "tres bien" matches "très bien"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class Lexicon:
    """One language's words by kind; the word lists are space-separated strings."""

    positive: str
    negative: str
    negators: str = ""
    intensifiers: str = ""
    neutral: str = ""  # matched only so that the words inside them are not (你好, いいえ)
    scan: bool = False  # longest match in text written without spaces between words
    fold: bool = False  # compare without accents
    negation: str = "before"  # where negators stand: before, after or both
    prefixes: tuple[str, ...] = ()  # clitics stripped before a lookup (Arabic و, ال)
    kinds: dict[str, str] = field(init=False, repr=False, compare=False)
    longest: int = field(init=False, repr=False, compare=False)  # characters of the longest word

    def __post_init__(self) -> None:
        kinds = {}
        for kind, words in [
            (NEUTRAL, self.neutral),
            (INTENSIFIER, self.intensifiers),
            (NEGATOR, self.negators),
            (NEGATIVE, self.negative),
            (POSITIVE, self.positive),
        ]:
            kinds.update((self.normalize(word), kind) for word in words.split())
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "longest", max(map(len, kinds)))

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        return _fold(text) if self.fold else text.lower()

    def items(self, text: str) -> list[str | None]:
        """The kind of each word of the text in order; None for words of no interest."""
        text = _CONTRACTED_NOT.sub(" not", self.normalize(text))
        return list(self._scan(text) if self.scan else map(self._lookup, _WORD.findall(text)))

    def _lookup(self, word: str) -> str | None:
        kind = self.kinds.get(word)
        for prefix in self.prefixes:
            if kind is None and word.startswith(prefix):
                kind = self.kinds.get(word[len(prefix) :])
        return kind

    def _scan(self, text: str) -> Iterator[str | None]:
        text = "".join(text.split())
        start, previous = 0, NEUTRAL
        while start < len(text):
            for length in range(min(self.longest, len(text) - start), 0, -1):
                kind = self.kinds.get(text[start : start + length])
                if kind is not None:
                    break
            else:
                kind, length = None, 1
            if kind is not None or previous is not None:  # a run of other characters is one word
                yield kind
            start, previous = start + length, kind


LEXICONS = {
    "en": Lexicon(
        positive="good great excellent amazing awesome wonderful fantastic love loved loves "
        "lovely delicious like liked enjoy enjoyed happy glad pleased delighted best better nice "
        "perfect brilliant superb outstanding beautiful recommend recommended helpful friendly "
        "easy comfortable impressive pleasant satisfied favorite favourite fun exciting "
        "incredible thanks thank success successful",
        negative="bad terrible awful horrible poor worst worse hate hated hates dislike "
        "disappointed disappointing disappointment sad angry annoyed annoying broken useless rude "
        "dirty boring ugly fail failed failure wrong waste wasted complaint unhappy upset "
        "frustrating frustrated nasty mediocre crashed buggy unacceptable",
        negators="not no never none nobody nothing neither nor without cannot",
        intensifiers="very really extremely so too absolutely totally highly incredibly super",
        fold=True,
    ),
    "es": Lexicon(
        positive="bueno buena buenos buenas excelente genial fantástico fantástica maravilloso "
        "maravillosa increíble perfecto perfecta encanta encantó encantado encantada gusta gustó "
        "delicioso deliciosa feliz contento contenta amable fácil recomiendo recomendable mejor "
        "bonito bonita hermoso hermosa agradable satisfecho satisfecha estupendo estupenda "
        "gracias éxito",
        negative="malo mala malos malas terrible horrible pésimo pésima peor odio odia "
        "decepcionado decepcionada decepción decepcionante triste enfadado enfadada enojado roto "
        "rota inútil sucio sucia aburrido aburrida fallo error grosero desastre queja lamentable "
        "horroroso",
        negators="no nunca jamás ni sin tampoco nada",
        intensifiers="muy realmente tan bastante súper sumamente totalmente",
        fold=True,
    ),
    "fr": Lexicon(
        positive="bon bonne bons bonnes excellent excellente génial géniale fantastique "
        "merveilleux merveilleuse incroyable parfait parfaite adore aime aimé heureux heureuse "
        "content contente ravi ravie agréable facile recommande meilleur meilleure beau belle "
        "magnifique délicieux délicieuse superbe sympathique satisfait satisfaite merci réussite "
        "bravo super",
        negative="mauvais mauvaise mauvaises terrible horrible affreux affreuse pire déteste "
        "décevant décevante déçu déçue triste fâché cassé cassée inutile sale ennuyeux ennuyeuse "
        "échec erreur nul nulle impoli désastre plainte médiocre",
        negators="pas jamais ne n ni sans aucun aucune rien",
        intensifiers="très vraiment tellement trop extrêmement absolument totalement",
        fold=True,
    ),
    "de": Lexicon(  # not folded: schön is not schon
        positive="gut gute guter gutes guten ausgezeichnet hervorragend toll tolle großartig "
        "wunderbar fantastisch super perfekt liebe lieben mag gefällt glücklich froh zufrieden "
        "freundlich einfach empfehlen empfehle besser beste schön schöne angenehm lecker danke "
        "erfolg genial prima",
        negative="schlecht schlechte schlechter schlechtes schlechten schrecklich furchtbar "
        "grauenhaft schlimm schlimmste hasse enttäuscht enttäuschend enttäuschung traurig wütend "
        "ärgerlich kaputt nutzlos unfreundlich schmutzig langweilig fehler versagt katastrophe "
        "beschwerde mangelhaft unzufrieden",
        negators="nicht kein keine keinen keiner keinem nie niemals ohne weder nichts",
        intensifiers="sehr wirklich extrem total absolut echt besonders",
        negation="both",  # nicht gut, and gefällt mir nicht
    ),
    "it": Lexicon(
        positive="buono buona buoni buone ottimo ottima eccellente fantastico fantastica "
        "meraviglioso meravigliosa incredibile perfetto perfetta adoro amo piace piaciuto "
        "piaciuta delizioso deliziosa felice contento contenta soddisfatto soddisfatta gentile "
        "facile consiglio consigliato migliore bello bella piacevole grazie successo stupendo "
        "splendido",
        negative="cattivo cattiva cattivi pessimo pessima terribile orribile peggio peggiore odio "
        "deluso delusa deludente delusione triste arrabbiato rotto rotta inutile sporco sporca "
        "noioso noiosa errore guasto disastro reclamo scortese scadente",
        negators="non mai senza nessun nessuno nessuna niente nulla",
        intensifiers="molto davvero veramente troppo estremamente assolutamente",
        fold=True,
    ),
    "pt": Lexicon(
        positive="bom boa bons boas ótimo ótima excelente maravilhoso maravilhosa fantástico "
        "fantástica incrível perfeito perfeita adoro amo gosto gostei adorei feliz contente "
        "satisfeito satisfeita delicioso deliciosa simpático fácil recomendo melhor bonito bonita "
        "lindo linda agradável obrigado obrigada sucesso",
        negative="mau má ruim péssimo péssima terrível horrível pior odeio odiei decepcionado "
        "decepcionada decepcionante triste zangado irritado quebrado quebrada inútil sujo suja "
        "chato chata erro falha desastre reclamação insatisfeito",
        negators="não nunca jamais nem sem nenhum nenhuma nada",
        intensifiers="muito muita realmente tão bastante extremamente totalmente",
        fold=True,
    ),
    "ar": Lexicon(
        positive="جيد جيدة جيدا رائع رائعة ممتاز ممتازة جميل جميلة أحب احب أحببت سعيد سعيدة شكرا "
        "مذهل أفضل افضل ممتع ممتعة مفيد",
        negative="سيء سيئ سيئة سيئا رديء فظيع فظيعة رهيب أكره اكره حزين حزينة غاضب أسوأ اسوأ مخيب "
        "خيبة بطيء مكسور ممل",
        negators="لا لم لن ليس ليست غير بدون",
        intensifiers="جدا للغاية",
        prefixes=("وال", "بال", "فال", "ال", "و"),
    ),
    "hi": Lexicon(
        positive="अच्छा अच्छी अच्छे बढ़िया शानदार उत्कृष्ट बेहतरीन सुंदर खुश प्रसन्न प्यार पसंद "
        "धन्यवाद महान मज़ेदार आसान संतुष्ट",
        negative="बुरा बुरी बुरे खराब ख़राब घटिया बेकार नफरत नफ़रत दुखी गुस्सा नाराज़ नाराज निराश "
        "भयानक असंतुष्ट",
        negators="नहीं न मत बिना",
        intensifiers="बहुत बेहद काफी सबसे अत्यंत",
        negation="after",  # यह अच्छा नहीं है
    ),
    "ja": Lexicon(
        positive="良い よい いい 素晴らしい すばらしい 最高 好き 大好き 嬉しい うれしい 楽しい "
        "美味しい おいしい 便利 満足 ありがとう 優しい 綺麗 きれい 快適 おすすめ 完璧 素敵 感動",
        negative="悪い わるい 最悪 嫌い 大嫌い 悲しい つまらない 不満 残念 ひどい 酷い 壊れ 不便 "
        "がっかり 良くない よくない 好きじゃない 楽しくない 美味しくない おいしくない まずい 不快 "
        "失望 高すぎ",
        negators="ない ません",
        intensifiers="とても 本当に すごく 非常に 大変",
        neutral="いいえ",
        scan=True,
        negation="after",  # 便利ではない
    ),
    "ko": Lexicon(
        positive="좋아요 좋다 좋은 좋았 좋네 최고 훌륭 멋지 멋진 행복 감사 고마워 고맙 사랑 만족 "
        "추천 맛있 친절 편리 완벽 기쁘 기뻐 재미있",
        negative="나쁘 나쁜 나빠 최악 싫어 싫다 슬프 슬퍼 실망 불만 화가 화나 느려 비싸 고장 불편 "
        "맛없 재미없 별로 좋지않 안좋 짜증",
        intensifiers="정말 너무 아주 매우 진짜",
        neutral="안녕",
        scan=True,
    ),
}
LEXICONS["zh"] = LEXICONS["zh-TW"] = Lexicon(  # simplified and traditional forms
    positive="好 很好 棒 优秀 優秀 出色 喜欢 喜歡 满意 滿意 开心 開心 高兴 高興 快乐 快樂 完美 "
    "推荐 推薦 精彩 美味 好吃 感谢 感謝 谢谢 謝謝 漂亮 方便 舒服 赞 讚 爱 愛",
    negative="差 很差 糟糕 坏 壞 讨厌 討厭 失望 难过 難過 生气 生氣 贵 貴 垃圾 烂 爛 难吃 難吃 "
    "不好 不满 不滿 后悔 後悔 恶心 噁心",
    negators="不 没 沒 没有 沒有 别 別",
    intensifiers="很 非常 太 真 特别 特別 超",
    neutral="你好 您好 好像 只好 好几 好幾 差不多",
    scan=True,
)


def _negated(items: list[str | None], i: int, negation: str) -> bool:
    """A negator near word i, with no other sentiment word between them."""
    sides = []
    if negation in ("before", "both"):
        sides.append(reversed(items[max(0, i - NEGATION_WINDOW) : i]))
    if negation in ("after", "both"):
        sides.append(items[i + 1 : i + 1 + NEGATION_WINDOW_AFTER])
    for side in sides:
        for kind in side:
            if kind in (POSITIVE, NEGATIVE):
                break
            if kind == NEGATOR:
                return True
    return False


def _evidence(items: list[str | None], negation: str) -> tuple[float, float]:
    """The weights of positive and negative words, after intensifiers and negators."""
    positive = negative = 0.0
    for i, kind in enumerate(items):
        if kind not in (POSITIVE, NEGATIVE):
            continue
        neighbours = items[max(0, i - 1) : i] + items[i + 1 : i + 2]
        weight = INTENSIFIED_WEIGHT if INTENSIFIER in neighbours else 1.0
        negated = _negated(items, i, negation)
        if negated:
            weight *= NEGATED_WEIGHT
        if (kind == POSITIVE) != negated:
            positive += weight
        else:
            negative += weight
    return positive, negative


def sentiment(text: str, language: str) -> dict[str, Any]:
    """{"Sentiment": ..., "SentimentScore": {...}} as DetectSentiment answers; the scores
    sum to 1."""
    lexicon = LEXICONS[language]
    positive, negative = _evidence(lexicon.items(text), lexicon.negation)
    weaker, stronger = sorted((positive, negative))
    raw = {
        "Positive": positive + FLOOR,
        "Negative": negative + FLOOR,
        "Neutral": NEUTRAL_PRIOR / (1 + positive + negative) + FLOOR,
        "Mixed": (2 * weaker * weaker / stronger if weaker else 0.0) + FLOOR,
    }
    total = sum(raw.values())
    scores = {name: value / total for name, value in raw.items()}
    label = max(scores, key=scores.__getitem__)  # ties go to the first: Positive
    return {"Sentiment": label.upper(), "SentimentScore": scores}


def _validation_error(message: str) -> AWSError:
    return AWSError(400, "ValidationException", f"1 validation error detected: {message}")


def _text_too_large(size: int) -> str:
    return (
        f"Input text size exceeds limit. Max length of request text allowed is "
        f"{MAX_TEXT_BYTES} bytes while in this request the text size is {size} bytes"
    )


def _member(payload: dict[str, Any], name: str, kind: type) -> Any:
    """A required member of the request, as Coral validates it before the operation runs."""
    value = payload.get(name)
    if value is None:
        camel = name[0].lower() + name[1:]
        raise _validation_error(
            f"Value null at '{camel}' failed to satisfy constraint: Member must not be null"
        )
    if not isinstance(value, kind):
        raise AWSError(400, "SerializationException", f"{name} must be a {kind.__name__}")
    return value


def _language(payload: dict[str, Any]) -> str:
    language = _member(payload, "LanguageCode", str)
    if language not in LANGUAGES:
        raise AWSError(
            400,
            "UnsupportedLanguageException",
            f"The language code '{language}' is not supported for sentiment detection. "
            f"Supported languages: {', '.join(LANGUAGES)}",
        )
    return language


def _texts(payload: dict[str, Any], batch: bool) -> list[str]:
    name = "TextList" if batch else "Text"
    texts = _member(payload, name, list) if batch else [_member(payload, name, str)]
    for i, text in enumerate(texts, 1):
        where = f"textList.{i}.member" if batch else "text"
        if not isinstance(text, str):
            raise AWSError(400, "SerializationException", f"{name} must hold strings")
        if not text:
            raise _validation_error(
                f"Value at '{where}' failed to satisfy constraint: "
                "Member must have length greater than or equal to 1"
            )
    if batch and not texts:
        raise _validation_error(
            "Value '[]' at 'textList' failed to satisfy constraint: "
            "Member must have length greater than or equal to 1"
        )
    return texts


def detect_sentiment(payload: dict[str, Any]) -> dict[str, Any]:
    (text,) = _texts(payload, batch=False)
    language = _language(payload)
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        raise AWSError(400, "TextSizeLimitExceededException", _text_too_large(size))
    return sentiment(text, language)


def batch_detect_sentiment(payload: dict[str, Any]) -> dict[str, Any]:
    texts = _texts(payload, batch=True)
    language = _language(payload)
    if len(texts) > MAX_BATCH_DOCUMENTS:
        raise AWSError(
            400,
            "BatchSizeLimitExceededException",
            f"The number of documents in the request exceeds the limit of "
            f"{MAX_BATCH_DOCUMENTS}. Try your request again with fewer documents.",
        )
    results, errors = [], []
    for index, text in enumerate(texts):
        size = len(text.encode())
        if size > MAX_TEXT_BYTES:
            errors.append(
                {
                    "Index": index,
                    "ErrorCode": "TEXT_SIZE_LIMIT_EXCEEDED",
                    "ErrorMessage": _text_too_large(size),
                }
            )
        else:
            results.append({"Index": index, **sentiment(text, language)})
    return {"ResultList": results, "ErrorList": errors}


Handler = Callable[[dict[str, Any]], dict[str, Any]]
OPERATIONS: dict[str, Handler] = {
    "DetectSentiment": detect_sentiment,
    "BatchDetectSentiment": batch_detect_sentiment,
}


class ComprehendSimulator(AWSSimulator):
    """Amazon Comprehend DetectSentiment and BatchDetectSentiment, scored by a lexicon.

    `operations` names the operations it serves; others are UnknownOperationException, as
    AWS answers a target it does not know. Without BatchDetectSentiment it stands for an
    emulator that lacks it (moto, for one, implements DetectSentiment only)."""

    operations: ClassVar[frozenset[str]] = frozenset(OPERATIONS)

    name = "comprehend"
    signing_name = "comprehend"
    protocol = JSON_11
    message_key = "Message"
    status_codes: ClassVar[dict[int, str]] = {
        **AWSSimulator.status_codes,
        400: "InvalidRequestException",
        500: "InternalServerException",
    }

    def operation(self, request: Request) -> Operation | None:
        if request.method != "POST" or request.path != "/":
            return None
        target = request.headers.get("x-amz-target", "")
        name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
        call = OPERATIONS.get(name) if name in self.operations else None
        if call is None:
            served = ", ".join(sorted(self.operations))
            raise AWSError(
                400,
                "UnknownOperationException",
                f"the simulator implements {served}, not {target or 'nothing'}",
                message_key="message",
            )
        return lambda request, caller: _answer(call, request)


def _answer(call: Handler, request: Request) -> Response:
    try:
        payload = json.loads(request.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise AWSError(400, "SerializationException", "the body is not a JSON object")
    return json_11_response(call(payload))
